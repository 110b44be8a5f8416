"""Pixel Dice and lesion-level metrics on hand-made masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from neopolyp_hf.training.metrics import DiceAccumulator, LesionAccumulator

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


def test_calibration_error_on_known_probabilities():
    from neopolyp_hf.training.metrics import CalibrationAccumulator

    truth = np.zeros((1, 10), np.uint8)
    truth[0, :8] = 1  # 8 of 10 pixels neoplastic
    probabilities = np.zeros((3, 1, 10), np.float32)
    probabilities[1] = 0.8  # says 0.8 everywhere: calibrated for the neoplastic class
    probabilities[0] = 0.2
    calibration = CalibrationAccumulator(CLASSES, bins=10)
    calibration.update(probabilities, truth)
    result = calibration.compute()
    assert result["ece_neoplastic"] == pytest.approx(0.0, abs=1e-6)
    assert result["ece_top_class"] == pytest.approx(0.0, abs=1e-6)  # top class right 80% at 0.8
    assert result["ece_non_neoplastic"] == pytest.approx(0.0, abs=1e-6)  # says 0, never is
    probabilities[1], probabilities[0] = 1.0, 0.0  # overconfident: says 1.0, right 80%
    overconfident = CalibrationAccumulator(CLASSES, bins=10)
    overconfident.update(probabilities, truth)
    assert overconfident.compute()["ece_neoplastic"] == pytest.approx(0.2)
    curve = overconfident.reliability()["neoplastic"]
    assert curve["count"][9] == 10 and curve["frequency"][9] == pytest.approx(0.8)


def test_confident_lesion_calls_against_all_calls():
    from neopolyp_hf.lesions import find_lesions
    from neopolyp_hf.training.metrics import LesionCallAccumulator

    truth = np.zeros((20, 30), np.uint8)
    truth[2:8, 2:8] = 1
    truth[2:8, 12:18] = 2
    truth[12:18, 2:8] = 2
    mask = truth.copy()
    mask[12:18, 2:8] = 1  # called neoplastic, wrongly ...
    mask[14:16, 22:26] = 1  # ... and a false positive, which is no call
    probabilities = np.zeros((3, 20, 30), np.float32)
    probabilities[0] = 1.0
    probabilities[:, 2:8, 2:8] = np.array([0, 0.9, 0.1])[:, None, None]
    probabilities[:, 2:8, 12:18] = np.array([0, 0.1, 0.9])[:, None, None]
    probabilities[:, 12:18, 2:8] = np.array([0, 0.55, 0.45])[:, None, None]  # the wrong call is uncertain
    probabilities[:, 14:16, 22:26] = np.array([0, 0.9, 0.1])[:, None, None]
    calls = LesionCallAccumulator()
    calls.update(find_lesions(mask, probabilities, CLASSES), mask, truth)
    result = calls.compute()
    assert result["lesion_calls"] == 3 and result["lesion_call_accuracy"] == pytest.approx(2 / 3)
    assert result["confident_lesion_calls"] == 2 and result["confident_lesion_call_accuracy"] == 1.0
    assert result["uncertain_call_share"] == pytest.approx(1 / 3)


def test_training_curves_of_a_single_epoch_show_its_points(tmp_path):
    """After one epoch each curve is a single point, which a bare line does not draw: the plot was blank but
    for its legend (about 290 coloured pixels; with the points drawn, about 960)."""
    from PIL import Image

    from neopolyp_hf.training.reporting import save_training_curves

    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9}]
    history[0].update(val_dice_neoplastic=0.5, val_dice_non_neoplastic=0.3, val_dice_mean=0.4)
    save_training_curves(history, tmp_path / "curves.png")
    pixels = np.asarray(Image.open(tmp_path / "curves.png").convert("RGB")).astype(int)
    assert ((pixels.max(2) - pixels.min(2)) > 60).sum() > 600


def test_validation_overlays_say_which_panel_is_the_truth(tmp_path):
    from neopolyp_hf.training.reporting import label_panel

    panel = np.full((200, 300, 3), 128, np.uint8)
    label_panel(panel, "truth")
    corner = panel[:30, :80]
    assert (corner == 0).all(axis=2).any() and (corner == 255).all(axis=2).any()  # white text on a black box
    assert (panel[100:, 150:] == 128).all()  # the rest untouched
