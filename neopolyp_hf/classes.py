"""The one definition of the segmentation classes and their colours."""

from __future__ import annotations

BACKGROUND = 0
NEOPLASTIC = 1
NON_NEOPLASTIC = 2

# Index i of each list describes class i. The colours are those of the competition's masks.
DEFAULT_CLASS_NAMES: tuple[str, ...] = ("background", "neoplastic", "non_neoplastic")
DEFAULT_CLASS_COLORS: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (255, 0, 0), (0, 255, 0))
