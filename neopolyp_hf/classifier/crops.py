"""Square crops of the original frame around a lesion's box: the one crop geometry for training and inference."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def crop_square(
    image: np.ndarray,
    center: tuple[float, float],
    side: float,
    size: int,
    aspect: float = 1.0,
    angle: float = 0.0,
) -> np.ndarray:
    """A `size` x `size` uint8 crop of the square of `side` px around `center` (x, y), optionally
    stretched by `aspect` (width / height) and rotated by `angle` degrees; outside the frame is black."""
    cx, cy = center
    side_x, side_y = side * np.sqrt(aspect), side / np.sqrt(aspect)
    theta = np.deg2rad(angle)
    cos, sin = np.cos(theta), np.sin(theta)
    # Maps crop pixel centres to frame coordinates (then inverted by WARP_INVERSE_MAP).
    sx, sy = side_x / size, side_y / size
    to_frame = np.array(
        [
            [cos * sx, -sin * sy, cx - (cos * sx * (size - 1) - sin * sy * (size - 1)) / 2],
            [sin * sx, cos * sy, cy - (sin * sx * (size - 1) + cos * sy * (size - 1)) / 2],
        ]
    )
    interpolation = cv2.INTER_AREA if max(side_x, side_y) > 2 * size else cv2.INTER_LINEAR
    if interpolation == cv2.INTER_AREA:  # warpAffine has no area filter: pre-shrink instead
        return _shrunk_crop(image, center, side_x, side_y, size, angle)
    return cv2.warpAffine(
        image,
        to_frame,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def _shrunk_crop(image, center, side_x, side_y, size, angle) -> np.ndarray:
    """A crop much larger than `size`: cut with a margin, area-resize, then warp (no aliasing)."""
    cx, cy = center
    reach = int(np.ceil(0.75 * max(side_x, side_y))) + 2
    x0, y0 = int(cx) - reach, int(cy) - reach
    padded = cv2.copyMakeBorder(
        image[max(0, y0) : max(0, y0 + 2 * reach), max(0, x0) : max(0, x0 + 2 * reach)],
        max(0, -y0),
        max(0, y0 + 2 * reach - image.shape[0]),
        max(0, -x0),
        max(0, x0 + 2 * reach - image.shape[1]),
        cv2.BORDER_CONSTANT,
        value=0,
    )
    scale = 2 * size / max(side_x, side_y)
    small = cv2.resize(padded, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    local = ((cx - x0) * scale, (cy - y0) * scale)
    return crop_square(small, local, max(side_x, side_y) * scale, size, side_x / side_y, angle)


def lesion_square(bbox: Sequence[int], margin: float) -> tuple[tuple[float, float], float]:
    """(centre, side) of the square crop for a lesion box (x, y, w, h): its longer side plus `margin`
    of it on each side, so the polyp's edge and the mucosa around it are in view."""
    x, y, w, h = bbox
    return (x + w / 2.0 - 0.5, y + h / 2.0 - 0.5), max(w, h, 8) * (1.0 + 2.0 * margin)


def lesion_crops(image: np.ndarray, bboxes: Sequence[Sequence[int]], size: int, margin: float) -> np.ndarray:
    """N x size x size x 3 uint8: one square crop of `image` per lesion box."""
    crops = np.zeros((len(bboxes), size, size, 3), np.uint8)
    for i, bbox in enumerate(bboxes):
        center, side = lesion_square(bbox, margin)
        crops[i] = crop_square(image, center, side, size)
    return crops


def normalize_crops(crops: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """N x S x S x 3 uint8 -> N x 3 x S x S float32, normalized as the segmenter's input."""
    scaled = crops.astype(np.float32) / 255.0
    scaled = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))
