"""The one definition of the segmentation classes and their colours: the competition's three, fixed."""

from __future__ import annotations

# The Hub id of the dataset these classes come from (BKAI-IGH NeoPolyp), named on model cards.
DATASET_ID = "bkai-igh-neopolyp"

BACKGROUND = 0
NEOPLASTIC = 1
NON_NEOPLASTIC = 2

# Index i of each tuple describes class i. The colours are those of the competition's masks.
CLASS_NAMES: tuple[str, ...] = ("background", "neoplastic", "non_neoplastic")
CLASS_COLORS: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (255, 0, 0), (0, 255, 0))
POLYP_CLASSES: tuple[int, ...] = (NEOPLASTIC, NON_NEOPLASTIC)
# How people read the class names: on the page, in tables and legends. Files meant for machines
# (CSV columns, JSON keys) keep CLASS_NAMES.
CLASS_DISPLAY_NAMES: tuple[str, ...] = ("Background", "Neoplastic", "Non-neoplastic")
# The smallest region listed as a lesion, in pixels of the original frame. The smallest true lesion in
# the BKAI-IGH training masks covers 864 px of a 1280 px wide frame (the 1st percentile 1,600 px); 100 px
# is under an eighth of it, so a lesion that small still lists at half that resolution, while the specks
# of a few pixels that a segmenter leaves at its borders do not.
DEFAULT_MIN_LESION_AREA = 100
# The class of the rarer polyps: the one that minority oversampling draws more often.
MINORITY_CLASS = NON_NEOPLASTIC


def display_name(name: str) -> str:
    """The display name of a class given by its machine name ("non_neoplastic" -> "Non-neoplastic")."""
    return CLASS_DISPLAY_NAMES[CLASS_NAMES.index(name)]


def yes_no(flag: bool) -> str:
    """The one spelling of a yes/no value on the page, in tables and in CSV files."""
    return "yes" if flag else "no"
