"""Mask codec for the competition's RGB masks, and the colour overlay."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .atomic import write_atomic
from .classes import CLASS_COLORS

Colors = Sequence[Sequence[int]]


def _palette(colors: Colors) -> np.ndarray:
    palette = np.asarray(colors, dtype=np.int32)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"class colours must be a list of [r, g, b] triples, got shape {palette.shape}")
    return palette


def decode_mask(rgb: np.ndarray, colors: Colors = CLASS_COLORS) -> np.ndarray:
    """Map an RGB mask (HxWx3 uint8, JPEG noise allowed) to class indices (HxW uint8).

    Each pixel takes the class whose colour is nearest in RGB space. JPEG ringing moves
    colours by tens of levels at most, far less than the distance between palette colours,
    so this is robust where exact matching or a single-channel threshold is not.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a colour mask must be HxWx3, got shape {rgb.shape}")
    palette = _palette(colors).astype(np.float32)
    # argmin |x - c|^2 = argmax (2 x.c - |c|^2): one small matrix product. Every value is an
    # integer below 2^24, so float32 is exact here and ties break as in the plain distance.
    scores = rgb.reshape(-1, 3).astype(np.float32) @ (2.0 * palette.T) - (palette**2).sum(axis=1)
    return scores.argmax(axis=1).astype(np.uint8).reshape(rgb.shape[:2])


def _lookup_tables(colors: Colors) -> np.ndarray:
    palette = _palette(colors)
    if palette.min() < 0 or palette.max() > 255:
        raise ValueError("class colours must be in 0..255")
    tables = np.zeros((3, 256), np.uint8)
    tables[:, : len(palette)] = palette.T
    return tables


def colorize_mask(classes: np.ndarray, colors: Colors = CLASS_COLORS) -> np.ndarray:
    """Map class indices (HxW) to an RGB mask (HxWx3 uint8), the inverse of `decode_mask`."""
    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise ValueError(f"a class mask must be HxW, got shape {classes.shape}")
    count = len(_palette(colors))
    if classes.size and int(classes.max()) >= count:
        raise ValueError(f"class index {int(classes.max())} has no colour (there are {count} classes)")
    # One table look-up per channel: several times faster than fancy indexing on a full frame.
    indices = np.ascontiguousarray(classes, dtype=np.uint8)
    return cv2.merge([cv2.LUT(indices, table) for table in _lookup_tables(colors)])


def polyp_box(classes: np.ndarray) -> tuple[slice, slice] | None:
    """Rows and columns of the smallest box holding every non-background pixel; None if there is none."""
    x, y, w, h = cv2.boundingRect((np.asarray(classes) > 0).view(np.uint8))
    return (slice(y, y + h), slice(x, x + w)) if w and h else None


def overlay_mask(
    image: np.ndarray | Image.Image,
    classes: np.ndarray,
    colors: Colors = CLASS_COLORS,
    alpha: float = 0.5,
) -> Image.Image:
    """Blend the class colours into the image; background pixels are left as they are."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = np.ascontiguousarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if base.shape[:2] != classes.shape:
        raise ValueError(f"image {base.shape[:2]} and mask {classes.shape} differ in size")
    out = base.copy()
    box = polyp_box(classes)
    if box is not None:  # blend only the box around the polyps: often a small part of the frame
        inside = classes[box]
        blended = cv2.addWeighted(base[box], 1.0 - alpha, colorize_mask(inside, colors), alpha, 0.0)
        np.copyto(out[box], blended, where=(inside > 0)[..., None])
    return Image.fromarray(out)


def save_mask_png(classes: np.ndarray, path: str | Path, colors: Colors = CLASS_COLORS) -> Path:
    """The colour mask (the competition's colours) as a lossless PNG, written atomically."""
    picture = Image.fromarray(colorize_mask(classes, colors))
    return write_atomic(path, lambda tmp: picture.save(tmp, format="PNG"))


def class_percentages(classes: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Percentage of all pixels in each polyp class (class 0, background, left out)."""
    # One comparison per class: several times faster than a bincount over a full frame.
    # Plain floats (np.count_nonzero gives a NumPy integer): they print and serialize as numbers.
    return {
        name: float(100.0 * np.count_nonzero(classes == i) / classes.size)
        for i, name in enumerate(class_names)
        if i > 0
    }


RESEARCH_MARK = "Research software - not for clinical use"
UNCERTAIN_LABEL = "uncertain class (outlined)"
UNCERTAIN_OUTLINE = (255, 255, 0)  # yellow: neither class colour, and readable on red, green and tissue


class FrameLegend:
    """The class legend and the research-only mark, drawn once for a frame size and stamped into the
    bottom-left corner of each overlaid video frame (a copy of a small strip: no cost per frame to speak of).

    Args:
        size: the frames' (width, height) in px.
        names: the display names of the polyp classes, in order.
        colors: their RGB colours, in the same order.
    """

    def __init__(self, size: tuple[int, int], names: Sequence[str], colors: Colors) -> None:
        width, height = size
        scale = min(1.0, max(0.35, width / 1600))
        thickness = 1 if scale < 0.7 else 2
        line = int(28 * scale) + 6
        lines = [*names, UNCERTAIN_LABEL, RESEARCH_MARK]
        text_width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] for t in lines)
        strip = np.zeros((min(height, line * len(lines) + 8), min(width, text_width + line + 16), 3), np.uint8)
        for i, text in enumerate(lines):
            y = 4 + i * line
            x = 8
            if i <= len(names):  # a swatch of the class colour before its name; an outline for the uncertain
                colour = tuple(int(c) for c in colors[i]) if i < len(names) else UNCERTAIN_OUTLINE
                cv2.rectangle(strip, (x, y + 4), (x + line - 12, y + line - 8), colour, -1 if i < len(names) else 2)
                x += line
            cv2.putText(
                strip,
                text,
                (x, y + line - 10),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                (255, 255, 255),
                thickness,
                cv2.LINE_AA,
            )
        self.strip = strip

    def stamp(self, frame: np.ndarray) -> np.ndarray:
        """Copy the legend into the bottom-left corner of an H x W x 3 uint8 frame, in place; returns it."""
        h, w = self.strip.shape[:2]
        frame[frame.shape[0] - h :, :w] = self.strip
        return frame
