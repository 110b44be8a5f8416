"""Dice scores, in the two conventions the project reports, and lesion-level detection and classification."""

from __future__ import annotations

import numpy as np

from .lesions import label_polyps, region_votes


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


class LesionAccumulator:
    """Lesion-level detection and classification over a set of (prediction, truth) mask pairs.

    - a true lesion is an 8-connected region of the true polyp mask (any polyp class); its
      class is the majority true class inside it;
    - it is found when predicted polyp pixels cover at least `min_coverage` of it, and its
      predicted class is then the majority predicted polyp class inside it;
    - the "perfect lesion classes" ceiling re-labels each predicted lesion (a connected region
      of the predicted polyp mask) with the majority true polyp class it overlaps, keeping the
      predicted polyp pixels, and scores the result with pooled Dice.
    """

    def __init__(self, class_names: list[str], min_coverage: float = 0.1) -> None:
        self.class_names = list(class_names)
        self.min_coverage = min_coverage
        # confusion[true class - 1, called]: called 0 = missed, else the predicted class.
        self.confusion = np.zeros((len(class_names) - 1, len(class_names)), np.int64)
        self.ceiling = DiceAccumulator(class_names)

    def update(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        """Add one image's predicted and true class masks (H x W)."""
        if prediction.shape != truth.shape:
            raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
        classes = len(self.class_names)
        count, labels, _ = label_polyps(truth)
        if count > 1:
            true_votes = region_votes(labels, truth, count, classes)
            pred_votes = region_votes(labels, prediction, count, classes)
            for region in range(1, count):
                true_class = int(true_votes[region, 1:].argmax()) + 1
                area = int(true_votes[region, 1:].sum())
                covered = int(pred_votes[region, 1:].sum())
                called = int(pred_votes[region, 1:].argmax()) + 1 if covered >= self.min_coverage * area else 0
                self.confusion[true_class - 1, called] += 1
        self.ceiling.update(_relabel_with_truth(prediction, truth, classes), truth)

    def compute(self) -> dict[str, float]:
        """Per true class: lesion count, detection recall, missed / called-as counts and shares;
        the found-lesion balanced accuracy and the perfect-lesion-class Dice ceiling."""
        result: dict[str, float] = {}
        accuracies = []
        for row, name in enumerate(self.class_names[1:]):
            counts = self.confusion[row]
            total, missed = int(counts.sum()), int(counts[0])
            found = total - missed
            result[f"lesions_{name}"] = total
            result[f"lesion_recall_{name}"] = found / total if total else float("nan")
            result[f"lesions_{name}_missed"] = missed
            for called, called_name in enumerate(self.class_names[1:], start=1):
                result[f"lesions_{name}_called_{called_name}"] = int(counts[called])
            right = int(counts[row + 1])
            result[f"lesion_class_accuracy_{name}"] = right / found if found else float("nan")
            if found:
                accuracies.append(right / found)
        result["lesion_balanced_accuracy"] = float(np.mean(accuracies)) if accuracies else float("nan")
        for key, value in self.ceiling.compute().items():
            result[f"ceiling_{key}"] = value
        return result


def _relabel_with_truth(prediction: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """Each predicted lesion takes the majority true polyp class it overlaps (its own where none)."""
    count, labels, _ = label_polyps(prediction)
    if count <= 1:
        return prediction
    true_votes = region_votes(labels, truth, count, classes)[:, 1:]
    pred_votes = region_votes(labels, prediction, count, classes)[:, 1:]
    has_truth = true_votes.sum(axis=1) > 0
    region_class = np.where(has_truth, true_votes.argmax(axis=1), pred_votes.argmax(axis=1)) + 1
    region_class[0] = 0
    return region_class.astype(prediction.dtype)[labels]
