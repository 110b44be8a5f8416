"""The one preprocessing path: image loading, resize and normalization.

Training (from its resized cache), `predict`, the CLI tools and the app all go through
`resize_image` and `normalize`, with the values taken from the model's config.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .dicom import is_dicom, read_still
from .errors import ImageLoadError

# An endoscopy frame is at most a few megapixels; 64 MP leaves room for any of them while
# refusing decompression bombs before they are decoded.
DEFAULT_MAX_PIXELS = 64_000_000

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray
# What an endoscope or a browser upload plausibly is. Pillow's other decoders (EPS through
# Ghostscript, FITS, PSD, ...) are attack surface with no use here.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
ORIENTATION_TAG = 0x0112  # EXIF
SRGB_PROFILE = ImageCms.createProfile("sRGB")
# File extensions of what load_image reads (a DICOM file is also known by its content, whatever its name).
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".dcm")


def _describe(source: ImageInput) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"'{source}'"
    return f"the {type(source).__name__} input"


@functools.lru_cache(maxsize=8)
def _to_srgb(profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The transform from an embedded ICC profile to sRGB (built once per profile), or None where the profile
    is sRGB already or cannot be read (then the pixels are taken as sRGB, as a browser does)."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        if "srgb" in ImageCms.getProfileDescription(source).replace(" ", "").lower():
            return None  # the common case, and a near-identity: spared the per-pixel work
        return ImageCms.buildTransform(source, SRGB_PROFILE, mode, mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F) to an HxWx3 uint8 array, in sRGB: an embedded
    ICC profile (Display P3, Adobe RGB, ...) is converted from, so the model sees what a viewer shows."""
    if image.getexif().get(ORIENTATION_TAG, 1) != 1:  # exif_transpose copies even upright frames
        image = ImageOps.exif_transpose(image)
    profile = image.info.get("icc_profile")
    if profile and image.mode in ("RGB", "RGBA"):
        transform = _to_srgb(profile, image.mode)
        if transform is not None:
            image = ImageCms.applyTransform(image, transform)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: scale their own range to 8 bits rather than clipping.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency onto black, the colour of the endoscope's border.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8))


def load_image(
    source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS, formats: Sequence[str] = ALLOWED_FORMATS
) -> np.ndarray:
    """Read a path, bytes, PIL image or array into an HxWx3 uint8 RGB array, EXIF-upright.

    Files are opened with Pillow's decoders for `formats` only; any other format is refused by name. A DICOM
    still (a file or bytes with the DICOM mark, whatever its name) is read by `neopolyp_hf.dicom.read_still`.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, max_pixels)
    if isinstance(source, Image.Image):
        _check_pixels(source.width * source.height, max_pixels, _describe(source))
        return _pil_to_rgb(source)
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise ImageLoadError(f"image file {name} does not exist")
    dicom = is_dicom(source)
    if not dicom and isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".dcm":
        raise ImageLoadError(
            f"{name} has a DICOM name but is not a DICOM file (no DICM mark, no DICOM data set at its start)"
        )
    if dicom:  # a hospital's still: VL Endoscopic, Secondary Capture, ...
        still = read_still(source, name, max_pixels)
        if still.icc_profile:  # converted to sRGB as a PNG's or JPEG's profile is
            image = Image.fromarray(still.rgb)
            image.info["icc_profile"] = still.icc_profile
            return _pil_to_rgb(image)
        return still.rgb
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # Pillow warns, then raises, over its own pixel limit; ours (max_pixels) is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(data, formats=list(formats)) as image:
                _check_pixels(image.width * image.height, max_pixels, name)
                image.load()
                return _pil_to_rgb(image)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(
            f"{name} claims more pixels than can be decoded safely (a decompression bomb?), "
            f"over the limit of {max_pixels:,}: {error}"
        ) from error
    except UnidentifiedImageError as error:
        found = _sniff_format(data)
        if found is not None and found not in formats:
            raise ImageLoadError(
                f"{name} is in {found} format, which is not accepted (accepted: {', '.join(formats)})"
            ) from error
        raise ImageLoadError(f"{name} is not a readable image file (unknown or unsupported format)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{name} is corrupt or truncated: {error}") from error


def _sniff_format(data) -> str | None:
    """The format Pillow would read the file as: header parsing only, nothing is decoded."""
    try:
        if hasattr(data, "seek"):
            data.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(data) as image:
                return image.format
    except Exception:  # only for a better message
        return None


def _check_pixels(pixels: int, max_pixels: int, name: str) -> None:
    if pixels > max_pixels:
        raise ImageLoadError(f"{name} has {pixels:,} pixels, over the limit of {max_pixels:,}")
    if pixels == 0:
        raise ImageLoadError(f"{name} is empty (0 pixels)")


def _array_to_rgb(array: np.ndarray, max_pixels: int) -> np.ndarray:
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        _check_pixels(array.shape[0] * array.shape[1], max_pixels, "the array input")
        if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
            return np.ascontiguousarray(array)
        squeezed = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
        if squeezed.dtype == np.uint16 and squeezed.ndim == 3:
            # 16-bit colour (capture cards, tifffile, cv2.IMREAD_UNCHANGED): the high byte, as Pillow reads a
            # 16-bit colour PNG or TIFF, so an array and its file give the same frame.
            squeezed = (squeezed >> 8).astype(np.uint8)
        elif squeezed.dtype == np.uint16:
            return _pil_to_rgb(Image.fromarray(squeezed.astype(np.int32), mode="I"))
        if squeezed.dtype != np.uint8:
            raise ImageLoadError(f"an array input must be uint8 or uint16, got {array.dtype}")
        return _pil_to_rgb(Image.fromarray(squeezed))
    raise ImageLoadError(f"an array input must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWx3 uint8 image to size x size (area interpolation: it averages, never aliases)."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a class-index mask with nearest neighbour, so that no new class values appear."""
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HxWx3 -> float32 3xHxW tensor, scaled to [0, 1] and standardized per channel."""
    scaled = image.astype(np.float32) / np.float32(255.0)
    standardized = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(standardized.transpose(2, 0, 1)))


def preprocess(image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The model's input for one RGB image: resize, then normalize; 3 x size x size."""
    return normalize(resize_image(image, size), mean, std)
