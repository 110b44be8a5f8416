"""Dice scores, in the two conventions the project reports."""

from __future__ import annotations

import numpy as np


class DiceAccumulator:
    """Accumulates per-class and per-image Dice over a set of (prediction, truth) mask pairs.

    - pooled Dice: intersections and sizes summed over all pixels of the set, per class;
    - per-image Dice: the mean over image x class pairs, an empty prediction on an empty
      truth counting as 1 (the Kaggle convention).
    """

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)
        polyp_classes = len(class_names) - 1
        self.intersection = np.zeros(polyp_classes, np.int64)
        self.total = np.zeros(polyp_classes, np.int64)
        self.per_image: list[float] = []

    def update(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        """Add one image's (or a batch's) predicted and true class masks."""
        if prediction.shape != truth.shape:
            raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
        batch = prediction.reshape(-1, *prediction.shape[-2:]) if prediction.ndim > 2 else prediction[None]
        truths = truth.reshape(batch.shape)
        for pred, true in zip(batch, truths, strict=True):
            for index in range(1, len(self.class_names)):
                p, t = pred == index, true == index
                inter, size = int(np.count_nonzero(p & t)), int(np.count_nonzero(p) + np.count_nonzero(t))
                self.intersection[index - 1] += inter
                self.total[index - 1] += size
                self.per_image.append(1.0 if size == 0 else 2.0 * inter / size)

    def compute(self) -> dict[str, float]:
        """`dice_<class>` (pooled), `dice_mean` (pooled, mean of classes) and `dice_per_image`."""
        pooled = np.where(self.total > 0, 2.0 * self.intersection / np.maximum(self.total, 1), 1.0)
        result = {f"dice_{name}": float(d) for name, d in zip(self.class_names[1:], pooled, strict=True)}
        result["dice_mean"] = float(pooled.mean())
        result["dice_per_image"] = float(np.mean(self.per_image)) if self.per_image else float("nan")
        return result
