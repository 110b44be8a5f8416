"""Evaluate a model at full resolution on competition-layout data: pixel Dice and lesion-level metrics, as JSON.

python train/evaluate.py --model PATH_OR_REPO --data-dir DIR [--ids FILE] [--tta] [--no-lesion-consistency]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neopolyp_hf import NeoPolypUNet  # noqa: E402
from neopolyp_hf.data import DataError, Sample, find_pairs, load_pair  # noqa: E402
from neopolyp_hf.metrics import DiceAccumulator, LesionAccumulator  # noqa: E402
from neopolyp_hf.model import ModelSourceError  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description="Full-resolution Dice of a NeoPolyp model.")
    parser.add_argument("--model", required=True, help="model folder or Hub repo id")
    parser.add_argument("--data-dir", required=True, help="competition layout: train/train, train_gt/train_gt")
    parser.add_argument(
        "--ids",
        default=None,
        help="restrict to these ids: a split.json from training (its 'val' list) or one id per line",
    )
    parser.add_argument("--tta", action="store_true", help="average over horizontal and vertical flips")
    parser.add_argument(
        "--no-lesion-consistency", action="store_true", help="skip the step that gives each connected polyp one class"
    )
    return parser


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
    model: NeoPolypUNet, samples: list[Sample], tta: bool = False, lesion_consistency: bool = True
) -> dict[str, float]:
    """Pooled per-class and mean Dice, per-image mean Dice and the lesion-level metrics
    (`LesionAccumulator`), at each image's original size."""
    dice = DiceAccumulator(model.config["class_names"])
    lesions = LesionAccumulator(model.config["class_names"])
    for sample in tqdm(samples, desc="evaluate", leave=False):
        image, truth = load_pair(sample)
        mask = model.predict(image, tta=tta, lesion_consistency=lesion_consistency).mask
        dice.update(mask, truth)
        lesions.update(mask, truth)
    return {**dice.compute(), **lesions.compute()}


def main(args: argparse.Namespace) -> dict:
    """Evaluate and print one JSON object."""
    try:
        model = NeoPolypUNet.from_pretrained(args.model)
        samples = select_samples(args.data_dir, read_ids(args.ids) if args.ids else None)
    except (DataError, ModelSourceError, ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from error
    started = time.perf_counter()
    result = evaluate_model(model, samples, tta=args.tta, lesion_consistency=not args.no_lesion_consistency)
    result.update(
        images=len(samples),
        tta=args.tta,
        lesion_consistency=not args.no_lesion_consistency,
        seconds=round(time.perf_counter() - started, 1),
    )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
