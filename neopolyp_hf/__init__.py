"""NeoPolyp: colon-polyp segmentation (background, neoplastic, non-neoplastic). Research use only."""

from .config import ModelConfig
from .errors import ConfigError, DataError, ImageLoadError, ModelSourceError, NeoPolypError
from .inference import Prediction
from .lesions import Lesion, harmonize_lesions
from .masks import colorize_mask, decode_mask, overlay_mask
from .model import NeoPolypUNet
from .preprocessing import load_image
from .rle import rle_decode, rle_encode

__all__ = [
    "ConfigError",
    "DataError",
    "ImageLoadError",
    "Lesion",
    "ModelConfig",
    "ModelSourceError",
    "NeoPolypError",
    "NeoPolypUNet",
    "Prediction",
    "colorize_mask",
    "decode_mask",
    "harmonize_lesions",
    "load_image",
    "overlay_mask",
    "rle_decode",
    "rle_encode",
]
