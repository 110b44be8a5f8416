"""Prediction for one image, shared by every backend: only the forward call differs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .lesions import Lesion, find_lesions, harmonize_lesions
from .masks import overlay
from .preprocessing import DEFAULT_MAX_PIXELS, ImageInput, load_image, preprocess

# (N, 3, S, S) float32 normalized images -> (N, C, S, S) float32 logits.
ForwardFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Prediction:
    """A segmentation at the input's original size, with its derived views."""

    image: np.ndarray = field(repr=False)  # HxWx3 uint8, upright
    mask: np.ndarray = field(repr=False)  # HxW uint8 class indices
    confidence: np.ndarray = field(repr=False)  # HxW float32, probability of the chosen class
    class_names: list[str]
    class_colors: list[list[int]]

    @cached_property
    def percentages(self) -> dict[str, float]:
        """Percentage of all image pixels in each polyp class."""
        counts = np.bincount(self.mask.ravel(), minlength=len(self.class_names))
        return {name: 100.0 * float(counts[i]) / self.mask.size for i, name in enumerate(self.class_names) if i > 0}

    @cached_property
    def polyp_percentages(self) -> dict[str, float]:
        """Share of the polyp area (all non-background pixels) held by each polyp class, in %."""
        counts = np.bincount(self.mask.ravel(), minlength=len(self.class_names))[1:]
        total = float(counts.sum())
        return {
            name: (100.0 * float(c) / total if total else 0.0)
            for name, c in zip(self.class_names[1:], counts, strict=True)
        }

    @cached_property
    def lesions(self) -> list[Lesion]:
        """Connected polyp regions with area, majority class and mean confidence."""
        return find_lesions(self.mask, self.confidence, self.class_names)

    @cached_property
    def overlay(self) -> Image.Image:
        """The input with the class colours blended in at 50% opacity."""
        return self.render_overlay(0.5)

    def render_overlay(self, alpha: float) -> Image.Image:
        """The input with the class colours blended in at opacity `alpha`."""
        return overlay(self.image, self.mask, self.class_colors, alpha)


def flip_tta_batch(batch: np.ndarray) -> np.ndarray:
    """Stack the identity, horizontal and vertical flips of an (N, 3, S, S) batch: (3N, 3, S, S)."""
    return np.concatenate([batch, batch[..., ::-1], batch[..., ::-1, :]], axis=0)


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax."""
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def predict_probabilities(forward: ForwardFn, batch: np.ndarray, tta: bool = False) -> np.ndarray:
    """Class probabilities (N, C, S, S) at model resolution, averaged over flips with `tta`."""
    if not tta:
        return softmax(forward(np.ascontiguousarray(batch)))
    n = batch.shape[0]
    probs = softmax(forward(np.ascontiguousarray(flip_tta_batch(batch))))
    # Undo each flip before averaging.
    return (probs[:n] + probs[n : 2 * n][..., ::-1] + probs[2 * n :][..., ::-1, :]) / 3.0


def probabilities_to_mask(
    probabilities: np.ndarray, height: int, width: int, lesion_consistency: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Upsample (C, S, S) probabilities to (H, W) before the argmax: (mask, confidence)."""
    hwc = np.ascontiguousarray(probabilities.transpose(1, 2, 0), dtype=np.float32)
    full = cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR)
    if full.ndim == 2:  # cv2 drops a single channel axis
        full = full[..., None]
    mask = full.argmax(axis=2).astype(np.uint8)
    if lesion_consistency:
        mask = harmonize_lesions(full.transpose(2, 0, 1), mask)
    confidence = np.take_along_axis(full, mask[..., None].astype(np.int64), axis=2)[..., 0]
    return mask, confidence


def predict_image(
    forward: ForwardFn,
    config: dict[str, Any],
    image: ImageInput,
    *,
    tta: bool = False,
    lesion_consistency: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Prediction:
    """Load, preprocess, run `forward` and postprocess one image."""
    rgb = load_image(image, max_pixels=max_pixels)
    batch = preprocess(rgb, config["input_size"], config["mean"], config["std"]).numpy()[None]
    probabilities = predict_probabilities(forward, batch, tta=tta)[0]
    mask, confidence = probabilities_to_mask(probabilities, rgb.shape[0], rgb.shape[1], lesion_consistency)
    return Prediction(
        image=rgb,
        mask=mask,
        confidence=confidence,
        class_names=list(config["class_names"]),
        class_colors=[list(c) for c in config["class_colors"]],
    )
