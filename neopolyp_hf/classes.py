"""The one definition of the segmentation classes and their colours: the competition's three, fixed."""

from __future__ import annotations

BACKGROUND = 0
NEOPLASTIC = 1
NON_NEOPLASTIC = 2

# Index i of each tuple describes class i. The colours are those of the competition's masks.
CLASS_NAMES: tuple[str, ...] = ("background", "neoplastic", "non_neoplastic")
CLASS_COLORS: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (255, 0, 0), (0, 255, 0))
POLYP_CLASSES: tuple[int, ...] = (NEOPLASTIC, NON_NEOPLASTIC)
# The class of the rarer polyps: the one that minority oversampling draws more often.
MINORITY_CLASS = NON_NEOPLASTIC
