"""Full-resolution evaluation of a model on competition-layout pairs: pixel Dice and lesion metrics."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from .classes import CLASS_NAMES
from .data import Sample, find_pairs, load_pair
from .errors import DataError
from .inference import Segmenter
from .metrics import CalibrationAccumulator, DiceAccumulator, LesionAccumulator, LesionCallAccumulator


def read_ids(path: str | Path) -> list[str]:
    """Ids from a training split.json ('val') or a text file with one id per line."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".json":
        return list(json.loads(text)["val"])
    return [line.strip() for line in text.splitlines() if line.strip()]


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
) -> dict[str, float]:
    """Pooled per-class and mean Dice, per-image mean Dice and the lesion-level metrics
    (`LesionAccumulator`), the calibration errors and the accuracy of confident lesion calls, at each
    image's original size. A `reliability` dict is filled with the reliability curves."""
    dice = DiceAccumulator(list(CLASS_NAMES))
    lesions = LesionAccumulator(list(CLASS_NAMES))
    calibration = CalibrationAccumulator(list(CLASS_NAMES))
    calls = LesionCallAccumulator()
    for sample in tqdm(samples, desc="evaluate", leave=False):
        image, truth = load_pair(sample)
        prediction = model.predict(image, tta=tta, lesion_consistency=lesion_consistency)
        dice.update(prediction.mask, truth)
        lesions.update(prediction.mask, truth)
        calibration.update(prediction.probabilities, truth)
        calls.update(prediction.lesions, prediction.mask, truth)
    scores = {**dice.compute(), **lesions.compute(), **calibration.compute(), **calls.compute()}
    if reliability is not None:
        reliability.update(calibration.reliability())
    return scores
