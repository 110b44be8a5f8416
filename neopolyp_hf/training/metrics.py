"""Dice scores, in the two conventions the project reports, and lesion-level detection and classification."""

from __future__ import annotations

import numpy as np

from ..lesions import label_lesions, region_votes


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
        count, labels, _ = label_lesions(truth)
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
    count, labels, _ = label_lesions(prediction)
    if count <= 1:
        return prediction
    true_votes = region_votes(labels, truth, count, classes)[:, 1:]
    pred_votes = region_votes(labels, prediction, count, classes)[:, 1:]
    has_truth = true_votes.sum(axis=1) > 0
    region_class = np.where(has_truth, true_votes.argmax(axis=1), pred_votes.argmax(axis=1)) + 1
    region_class[0] = 0
    return region_class.astype(prediction.dtype)[labels]


class CalibrationAccumulator:
    """Reliability of pixel probabilities over a set of images, in equal-width probability bins.

    Curves: "top_class" (the probability of the most likely class against whether it is right),
    and one per polyp class (P(class) against whether the pixel is of that class). The expected
    calibration error (ECE) of a curve is the pixel-weighted mean |mean probability - frequency|.
    """

    def __init__(self, class_names: list[str], bins: int = 15) -> None:
        self.bins = bins
        self.curves = {name: np.zeros((3, bins)) for name in ["top_class", *class_names[1:]]}
        self.class_names = list(class_names)

    def update(self, probabilities: np.ndarray, truth: np.ndarray) -> None:
        """Add one image: C x H x W probabilities and its H x W true class mask."""
        if probabilities.shape[1:] != truth.shape:
            raise ValueError(f"probabilities {probabilities.shape} and truth {truth.shape} differ in size")
        self._add("top_class", probabilities.max(axis=0), probabilities.argmax(axis=0) == truth)
        for index, name in enumerate(self.class_names[1:], start=1):
            self._add(name, probabilities[index], truth == index)

    def _add(self, curve: str, probability: np.ndarray, outcome: np.ndarray) -> None:
        flat = probability.ravel().astype(np.float64)
        index = np.minimum((flat * self.bins).astype(np.intp), self.bins - 1)
        table = self.curves[curve]
        table[0] += np.bincount(index, minlength=self.bins)
        table[1] += np.bincount(index, weights=flat, minlength=self.bins)
        table[2] += np.bincount(index, weights=outcome.ravel().astype(np.float64), minlength=self.bins)

    def reliability(self) -> dict[str, dict[str, list[float]]]:
        """Per curve and bin: pixel count, mean predicted probability, observed frequency (NaN if empty)."""
        result = {}
        for curve, (count, total_p, total_hits) in self.curves.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                result[curve] = {
                    "count": count.tolist(),
                    "mean_probability": (total_p / count).tolist(),
                    "frequency": (total_hits / count).tolist(),
                }
        return result

    def compute(self) -> dict[str, float]:
        """`ece_top_class` and `ece_<polyp class>`."""
        result = {}
        for curve, (count, total_p, total_hits) in self.curves.items():
            result[f"ece_{curve}"] = float(np.abs(total_p - total_hits).sum() / max(count.sum(), 1))
        return result


class LesionCallAccumulator:
    """How often a predicted lesion's class is right: all calls against those not flagged uncertain.

    A call is a predicted lesion that overlaps a true polyp; its true class is the majority true
    polyp class under it. Predicted lesions over background only are not calls (no class to check).
    """

    def __init__(self) -> None:
        self.calls = self.right = self.confident_calls = self.confident_right = 0

    def update(self, lesions: list, mask: np.ndarray, truth: np.ndarray) -> None:
        """Add one image: its `Prediction.lesions`, the predicted mask they came from, and the truth."""
        count, labels, _ = label_lesions(mask)
        votes = region_votes(labels, truth, count, int(max(mask.max(), truth.max())) + 1)[:, 1:]
        for lesion in lesions:
            if votes[lesion.label].sum() == 0:
                continue
            right = lesion.class_index == int(votes[lesion.label].argmax()) + 1
            self.calls += 1
            self.right += right
            if not lesion.uncertain:
                self.confident_calls += 1
                self.confident_right += right

    def compute(self) -> dict[str, float]:
        """Call counts and accuracies, and the share of calls flagged uncertain."""
        nan = float("nan")
        return {
            "lesion_calls": self.calls,
            "lesion_call_accuracy": self.right / self.calls if self.calls else nan,
            "confident_lesion_calls": self.confident_calls,
            "confident_lesion_call_accuracy": self.confident_right / self.confident_calls
            if self.confident_calls
            else nan,
            "uncertain_call_share": 1 - self.confident_calls / self.calls if self.calls else nan,
        }


class LesionClassAccumulator:
    """The class calls of predicted lesions that overlap a true polyp (true class: the majority true
    polyp class under it), from each source: the segmenter alone, the classifier alone, and the final
    call (fused and calibrated where there is a second stage). Keeps one record per call."""

    SOURCES = ("segmenter", "classifier", "final")

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    def update(self, lesions: list, mask: np.ndarray, truth: np.ndarray) -> None:
        """Add one image: its `Prediction.lesions`, the predicted mask they came from, and the truth."""
        count, labels, _ = label_lesions(mask)
        votes = region_votes(labels, truth, count, int(max(mask.max(), truth.max(), 2)) + 1)[:, 1:3]
        for lesion in lesions:
            if votes[lesion.label].sum() == 0:
                continue
            segmenter = lesion.segmenter_probability
            classifier = lesion.classifier_probability
            self.records.append(
                {
                    "neoplastic": float(votes[lesion.label].argmax() == 0),
                    "segmenter": float(lesion.neoplastic_probability if segmenter is None else segmenter),
                    "classifier": float("nan") if classifier is None else float(classifier),
                    "final": float(lesion.neoplastic_probability),
                    "area_px": float(lesion.area_px),
                    "confidence": float(lesion.confidence),
                }
            )

    def compute(self) -> dict[str, float]:
        """Per source: accuracy on true neoplastic and non-neoplastic lesions, and their mean (balanced)."""
        result: dict[str, float] = {"lesion_class_calls": len(self.records)}
        for source in self.SOURCES:
            result.update(
                {f"{source}_{k}": v for k, v in class_accuracies(self.records, lambda r, s=source: r[s]).items()}
            )
        return result


def class_accuracies(records: list[dict], probability) -> dict[str, float]:
    """Accuracy of the calls `probability(record) >= 0.5` per true class, and balanced."""
    nan = float("nan")
    values = np.array([probability(r) for r in records], dtype=float)
    truth = np.array([r["neoplastic"] for r in records], dtype=float)
    if len(values) == 0 or np.isnan(values).all():
        return {"accuracy_neoplastic": nan, "accuracy_non_neoplastic": nan, "balanced_accuracy": nan}
    called = values >= 0.5
    neo = float(called[truth == 1].mean()) if (truth == 1).any() else nan
    non = float((~called[truth == 0]).mean()) if (truth == 0).any() else nan
    return {
        "accuracy_neoplastic": neo,
        "accuracy_non_neoplastic": non,
        "balanced_accuracy": float(np.nanmean([neo, non])),
    }
