"""NeoPolyp: colon-polyp segmentation (background, neoplastic, non-neoplastic). Research use only."""

from .config import ConfigError
from .inference import Prediction
from .lesions import Lesion, harmonize_lesions
from .masks import colorize_mask, decode_mask, overlay
from .model import ModelSourceError, NeoPolypUNet
from .preprocessing import ImageLoadError, load_image
from .rle import rle_decode, rle_encode

__all__ = [
    "ConfigError",
    "ImageLoadError",
    "Lesion",
    "ModelSourceError",
    "NeoPolypUNet",
    "Prediction",
    "colorize_mask",
    "decode_mask",
    "harmonize_lesions",
    "load_image",
    "overlay",
    "rle_decode",
    "rle_encode",
]
