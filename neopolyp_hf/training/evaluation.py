"""Full-resolution evaluation of a model on competition-layout pairs: pixel Dice and lesion metrics."""

from __future__ import annotations

from pathlib import Path

from ..classes import CLASS_NAMES
from ..classifier.fusion import fused_logit
from ..errors import DataError
from ..inference import Segmenter
from ..logodds import sigmoid
from ..textfiles import read_user_json, read_user_text
from .calibration import expected_calibration_error
from .data import Sample, find_pairs, load_pair
from .metrics import (
    CalibrationAccumulator,
    DiceAccumulator,
    LesionAccumulator,
    LesionCallAccumulator,
    LesionClassAccumulator,
)
from .progress import progress_bar


def read_ids(path: str | Path) -> list[str]:
    """Ids from a training split.json ('val') or a text file with one id per line (UTF-8 with or without
    a byte-order mark, any line ending; blank lines skipped).

    Raises:
        DataError: an unreadable file, JSON that does not parse or has no 'val' list, naming the file.
    """
    if Path(path).suffix == ".json":
        split = read_user_json(path, "id file")
        if not isinstance(split, dict) or not isinstance(split.get("val"), list):
            raise DataError(f"id file '{path}' must be a split.json with a 'val' list of ids")
        return [str(i) for i in split["val"]]
    return [line.strip() for line in read_user_text(path, "id file").split("\n") if line.strip()]


def select_samples(data_dir: str | Path, ids: list[str] | None) -> list[Sample]:
    """The pairs of `data_dir`, restricted to `ids` where given; an unknown id is an error."""
    samples = find_pairs(data_dir)
    if ids is None:
        return samples
    by_id = {s.id: s for s in samples}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DataError(f"{len(missing)} id(s) are not in '{data_dir}', e.g. '{missing[0]}'")
    return [by_id[i] for i in ids]


def evaluate_model(
    model: Segmenter,
    samples: list[Sample],
    tta: bool = False,
    lesion_consistency: bool = True,
    reliability: dict | None = None,
    lesion_records: list | None = None,
    second_stage: bool = True,
) -> dict[str, float]:
    """Pooled per-class and mean Dice, per-image mean Dice and the lesion-level metrics
    (`LesionAccumulator`), the calibration errors and the accuracy of confident lesion calls, at each
    image's original size, and the found lesions' class accuracy per source (segmenter, classifier,
    final call). A `reliability` dict is filled with the reliability curves, a `lesion_records` list
    with one record per class call; `second_stage` False scores the segmenter's own calls."""
    dice = DiceAccumulator(list(CLASS_NAMES))
    lesions = LesionAccumulator(list(CLASS_NAMES))
    calibration = CalibrationAccumulator(list(CLASS_NAMES))
    calls = LesionCallAccumulator()
    classes = LesionClassAccumulator()
    for sample in progress_bar(samples, desc="evaluate", leave=False):
        image, truth = load_pair(sample)
        prediction = model.predict(image, tta=tta, lesion_consistency=lesion_consistency, second_stage=second_stage)
        dice.update(prediction.mask, truth)
        lesions.update(prediction.mask, truth)
        calibration.update(prediction.probabilities, truth)
        calls.update(prediction.lesions, prediction.mask, truth)
        classes.update(prediction.lesions, prediction.mask, truth)
    scores = {**dice.compute(), **lesions.compute(), **calibration.compute(), **calls.compute(), **classes.compute()}
    scores.update(lesion_calibration(classes.records, model._inference_config.get("lesion_classifier")))
    if lesion_records is not None:
        lesion_records.extend(classes.records)
    if reliability is not None:
        reliability.update(calibration.reliability())
    return scores


def lesion_calibration(records: list[dict], second_stage: dict | None = None) -> dict[str, float]:
    """Lesion-level expected calibration error of the segmenter's P(neoplastic | polyp) and of the final
    call; with a second stage, also of the fused call before its temperature (the calibration's "before")."""
    truth = [r["neoplastic"] for r in records]
    result = {
        "lesion_ece_segmenter": expected_calibration_error([r["segmenter"] for r in records], truth),
        "lesion_ece_final": expected_calibration_error([r["final"] for r in records], truth),
    }
    staged = [r for r in records if r["classifier"] == r["classifier"]]  # NaN: the segmenter alone
    if second_stage and staged:
        fused = fused_logit(
            [r["segmenter"] for r in staged], [r["classifier"] for r in staged], second_stage["fusion_weight"]
        )
        result["lesion_ece_fused_before_temperature"] = expected_calibration_error(
            sigmoid(fused), [r["neoplastic"] for r in staged]
        )
    return result


def calibration_figures(model: Segmenter, samples: list[Sample]) -> dict[str, float]:
    """What the card's uncertainty section reports, measured on held-out pairs at full resolution."""
    scores = evaluate_model(model, samples)
    keys = ("ece_top_class", "ece_neoplastic", "ece_non_neoplastic", "lesion_calls", "lesion_call_accuracy")
    keys += ("confident_lesion_calls", "confident_lesion_call_accuracy", "uncertain_call_share")
    keys += ("lesion_ece_segmenter", "lesion_ece_final")
    return {key: scores[key] for key in keys}
