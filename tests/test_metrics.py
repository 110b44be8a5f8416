"""Pixel Dice and lesion-level metrics on hand-made masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from neopolyp_hf.metrics import DiceAccumulator, LesionAccumulator

CLASSES = ["background", "neoplastic", "non_neoplastic"]


def test_dice_conventions():
    dice = DiceAccumulator(["background", "neoplastic", "non_neoplastic"])
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[0, :2] = 1
    prediction = truth.copy()
    prediction[0, 0] = 0  # 4 of 8 neoplastic pixels found
    dice.update(prediction, truth)
    result = dice.compute()
    assert result["dice_neoplastic"] == pytest.approx(2 * 4 / (4 + 8))
    assert result["dice_non_neoplastic"] == 1.0  # no such pixels anywhere: empty/empty
    # per image x class: image 0 (0.667, 1), image 1 (1, 1)
    assert result["dice_per_image"] == pytest.approx((2 * 4 / 12 + 3) / 4)


def lesion_scene() -> tuple[np.ndarray, np.ndarray]:
    """Truth: four lesions. Prediction: one missed, one found and right, one found and wrong,
    one barely touched (under 10%), plus a false positive far from any lesion."""
    truth = np.zeros((40, 40), np.uint8)
    prediction = np.zeros_like(truth)
    truth[1:11, 1:11] = 1  # neoplastic, 100 px: found (40%), called neoplastic
    prediction[1:5, 1:11] = 1
    truth[1:11, 20:30] = 2  # non-neoplastic, 100 px: found, called neoplastic (16 px vs 4)
    prediction[1:2, 20:30] = 1
    prediction[2:3, 20:24] = 2
    prediction[3:4, 20:26] = 1
    truth[20:30, 1:11] = 2  # non-neoplastic, 100 px: 9 px predicted, under 10%: missed
    prediction[20:29, 1:2] = 2
    truth[20:25, 20:30] = 1  # neoplastic, 50 px: nothing predicted: missed
    prediction[35:38, 35:38] = 2  # a false positive
    return prediction, truth


def test_lesion_detection_and_classes():
    prediction, truth = lesion_scene()
    lesions = LesionAccumulator(CLASSES)
    lesions.update(prediction, truth)
    result = lesions.compute()
    assert result["lesions_neoplastic"] == 2 and result["lesions_non_neoplastic"] == 2
    assert result["lesion_recall_neoplastic"] == 0.5 and result["lesion_recall_non_neoplastic"] == 0.5
    assert result["lesions_neoplastic_missed"] == 1 and result["lesions_neoplastic_called_neoplastic"] == 1
    assert result["lesions_non_neoplastic_missed"] == 1
    assert result["lesions_non_neoplastic_called_neoplastic"] == 1
    assert result["lesions_non_neoplastic_called_non_neoplastic"] == 0
    assert result["lesion_class_accuracy_neoplastic"] == 1.0
    assert result["lesion_class_accuracy_non_neoplastic"] == 0.0
    assert result["lesion_balanced_accuracy"] == 0.5


def test_lesion_coverage_threshold_is_inclusive():
    truth = np.zeros((10, 10), np.uint8)
    truth[:, :] = 2
    prediction = np.zeros_like(truth)
    prediction[0, :] = 2  # exactly 10% of the lesion
    lesions = LesionAccumulator(CLASSES)
    lesions.update(prediction, truth)
    assert lesions.compute()["lesion_recall_non_neoplastic"] == 1.0


def test_perfect_lesion_class_ceiling():
    prediction, truth = lesion_scene()
    lesions = LesionAccumulator(CLASSES)
    lesions.update(prediction, truth)
    result = lesions.compute()
    # The predicted region over the second lesion (20 px, all 8-connected) becomes non-neoplastic;
    # the false positive keeps its class; the missed lesions stay missed.
    ceiling = prediction.copy()
    ceiling[1:4, 20:30][prediction[1:4, 20:30] > 0] = 2
    expected = DiceAccumulator(CLASSES)
    expected.update(ceiling, truth)
    for key, value in expected.compute().items():
        assert result[f"ceiling_{key}"] == pytest.approx(value)
    # non-neoplastic: 20 + 9 correct pixels; predicted 20 + 9 + 9 (false positive), true 200
    assert result["ceiling_dice_non_neoplastic"] == pytest.approx(2 * 29 / (38 + 200))


def test_lesion_metrics_without_lesions_are_nan_not_errors():
    empty = np.zeros((8, 8), np.uint8)
    lesions = LesionAccumulator(CLASSES)
    lesions.update(empty, empty)
    result = lesions.compute()
    assert result["lesions_neoplastic"] == 0 and np.isnan(result["lesion_recall_neoplastic"])
    with pytest.raises(ValueError, match="differ in shape"):
        lesions.update(empty, np.zeros((4, 4), np.uint8))
