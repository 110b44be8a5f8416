"""Cross-validated quality of training recipes under the CPU protocol; or the protocol's one command.

    # k stratified, seeded folds over all pairs: train on k-1, score the left-out fold at full
    # resolution (pixel Dice and lesion metrics, with and without flip TTA); mean and spread
    python benchmarks/quality.py --data-dir ../shared/data/bkai-igh-neopolyp --output-dir runs/quality \\
        --folds 3 [--recipes neopolyp reference] [--only-folds 0] [--epochs N]

    # the one train/train.py command line that trains the default recipe under the CPU budget
    python benchmarks/quality.py --print-command --data-dir D --output-dir O

A recipe is a name from neopolyp_hf/training/recipes.py, optionally with overrides for ablations:
`neopolyp:minority_oversampling=1,class_weighted_ce=false`. Each recipe brings its CPU input
size and epochs (`cpu_image_size`, `cpu_epochs`). Every fold run resumes where it stopped and
keeps its scores in OUTPUT_DIR/<recipe>/fold<k>/scores.json; the summary goes to
OUTPUT_DIR/quality_folds.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from neopolyp_hf.atomic import write_text_atomic
from neopolyp_hf.classifier.fusion import fused_logit
from neopolyp_hf.logodds import sigmoid
from neopolyp_hf.onnx.loading import load_segmenter
from neopolyp_hf.training import recipes
from neopolyp_hf.training.data import build_cache, find_pairs, stratified_folds
from neopolyp_hf.training.evaluation import evaluate_model, select_samples
from neopolyp_hf.training.metrics import class_accuracies

ROOT = Path(__file__).resolve().parents[1]

# What the README table shows, per true class where it says <class>.
COLUMNS = (
    "dice_neoplastic",
    "dice_non_neoplastic",
    "dice_mean",
    "dice_per_image",
    "lesion_recall_neoplastic",
    "lesion_recall_non_neoplastic",
    "lesion_class_accuracy_neoplastic",
    "lesion_class_accuracy_non_neoplastic",
    "lesion_balanced_accuracy",
    "ceiling_dice_non_neoplastic",
    "ceiling_dice_mean",
)
# Found-lesion class accuracy per source: the segmenter alone, the classifier alone, the final call.
LESION_CLASS_COLUMNS = tuple(
    f"{source}_{metric}"
    for source in ("segmenter", "classifier", "final")
    for metric in ("accuracy_neoplastic", "accuracy_non_neoplastic", "balanced_accuracy")
)
FUSION_WEIGHTS = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11))


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--output-dir", default="runs/quality")
    parser.add_argument("--recipes", nargs="+", default=["reference", recipes.DEFAULT_RECIPE])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--only-folds", type=int, nargs="+", default=None, help="screening: run these folds only")
    parser.add_argument("--epochs", type=int, default=None, help="screening: fewer epochs than the recipe's")
    parser.add_argument(
        "--image-size", type=int, default=None, help="input size instead of the recipe's CPU one (e.g. 256 on a GPU)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the folds and the training")
    parser.add_argument("--no-tta", action="store_true", help="score without flip TTA only (halves the scoring)")
    parser.add_argument("--print-command", action="store_true", help="print the CPU protocol's train.py command")
    return parser


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """'name:field=value,field=value' -> (name, ['field=value', ...])."""
    name, _, overrides = spec.partition(":")
    return name, [o for o in overrides.split(",") if o]


def train_command(
    spec: str, data_dir: str, output_dir: str, epochs: int | None = None, image_size: int | None = None
) -> list[str]:
    """The train.py command line for a recipe spec under the CPU protocol (or another epochs and size)."""
    name, overrides = parse_spec(spec)
    recipe = recipes.resolve_recipe(name, overrides)
    command = [
        "python",
        "train/train.py",
        "--data-dir",
        data_dir,
        "--output-dir",
        output_dir,
        "--recipe",
        name,
        "--encoder-name",  # the recipe's own, on any device (train.py's GPU default is another encoder)
        recipe.encoder_name,
        "--image-size",
        str(image_size or recipe.cpu_image_size),
        "--epochs",
        str(epochs or recipe.cpu_epochs),
        # The one-cycle schedule ends near zero: keep the last epoch, and validate only for the curves.
        "--checkpoint",
        "last",
        "--val-every",
        "5",
    ]
    for override in overrides:
        command += ["--recipe-override", override]
    return command


def check_fold_folder(out: Path, split: dict) -> None:
    """Refuse a fold folder made for another fold assignment (other data, seed or fold code): its
    model and scores belong to other held-out images, and reusing them would mix splits in one table."""
    recorded = out / "fold_split.json"
    if recorded.is_file() and json.loads(recorded.read_text())["val"] != split["val"]:
        raise SystemExit(
            f"error: '{out}' was made for another fold {split['fold']} (its fold_split.json names other "
            "held-out images); move it aside or use another --output-dir"
        )


def run_fold(spec: str, fold: int, folds: list[list[str]], args: argparse.Namespace) -> dict:
    """Train a recipe on all folds but `fold`, score it on `fold`; resumable, cached in scores.json."""
    out = Path(args.output_dir) / spec.replace(":", "__").replace(",", "_").replace("=", "-") / f"fold{fold}"
    split = {
        "fold": fold,
        "seed": args.seed,
        "train": sorted(i for k, ids in enumerate(folds) if k != fold for i in ids),
        "val": folds[fold],
    }
    check_fold_folder(out, split)
    scores_path = out / "scores.json"
    if scores_path.is_file():
        return json.loads(scores_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "fold_split.json", json.dumps(split, indent=1))
    if not (out / "training.done").is_file():
        command = train_command(spec, args.data_dir, str(out), args.epochs, args.image_size)
        command[:2] = [sys.executable, str(ROOT / "train" / "train.py")]
        command += ["--split", str(out / "fold_split.json")]
        command += ["--seed", str(args.seed), "--num-overlays", "0"]
        if (out / "last").is_dir() or (out / "last.old").is_dir():
            command.append("--resume")
        subprocess.run(command, check=True)
        write_text_atomic(out / "training.done", "")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    model, info = load_segmenter(str(out / "best"), backend="torch")  # on a GPU where there is one
    samples = select_samples(args.data_dir, folds[fold])
    result = {
        "recipe": spec,
        "fold": fold,
        "image_size": model.config["input_size"],
        "encoder": model.config["encoder_name"],
        "epochs": len(history),
        "device": info.device,
        "train_minutes": round(sum(h["epoch_seconds"] for h in history) / 60, 1),
    }
    modes = [("plain", False, True)] + ([] if args.no_tta else [("tta", True, True)])
    if model.has_second_stage:  # the same run's segmenter alone: the one-stage figures at the same epochs
        modes += [("plain_one_stage", False, False)] + ([] if args.no_tta else [("tta_one_stage", True, False)])
        result["second_stage"] = json.loads((out / "second_stage.json").read_text())
    for mode, tta, second_stage in modes:
        started = time.perf_counter()
        records: list = []
        scores = evaluate_model(model, samples, tta=tta, second_stage=second_stage, lesion_records=records)
        result[mode] = {**scores, "images": len(samples), "seconds": time.perf_counter() - started}
        result[f"{mode}_lesion_records"] = records
    write_text_atomic(scores_path, json.dumps(result, indent=1))
    return result


def fusion_sweep(records: list[dict], weights=FUSION_WEIGHTS) -> dict[float, float]:
    """Found-lesion balanced accuracy of the fused call at each classifier weight (no temperature: it never
    changes a call)."""
    sweep = {}
    for weight in weights:
        fused = fused_logit([r["segmenter"] for r in records], [r["classifier"] for r in records], weight)
        scored = [{**r, "fused": float(z)} for r, z in zip(records, fused, strict=True)]
        sweep[weight] = class_accuracies(scored, lambda r: sigmoid(r["fused"]))["balanced_accuracy"]
    return sweep


def summarize(results: list[dict]) -> list[dict]:
    """Per recipe and TTA setting: mean, standard deviation, min and max of each metric over folds."""
    rows = []
    for spec in dict.fromkeys(r["recipe"] for r in results):
        mine = [r for r in results if r["recipe"] == spec]
        for mode in ("plain", "tta", "plain_one_stage", "tta_one_stage"):
            if not all(mode in r for r in mine):
                continue
            label = spec + (" (segmenter alone)" if mode.endswith("one_stage") else "")
            row = {"recipe": label, "tta": mode.startswith("tta"), "folds": [r["fold"] for r in mine]}
            row["train_minutes_mean"] = float(np.mean([r["train_minutes"] for r in mine]))
            for key in mine[0][mode]:
                row[key] = spread([r[mode][key] for r in mine])
            if f"{mode}_lesion_records" in mine[0] and not mode.endswith("one_stage") and "second_stage" in mine[0]:
                sweeps = [fusion_sweep(r[f"{mode}_lesion_records"]) for r in mine]
                row["fusion_sweep"] = {str(w): spread([s[w] for s in sweeps]) for w in FUSION_WEIGHTS}
            rows.append(row)
    return rows


def spread(values) -> dict[str, float]:
    """Mean, standard deviation (over folds), min and max; NaNs (a class with no call) are left out."""
    values = np.array(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "min": float(values.min()), "max": float(values.max())}


def print_table(rows: list[dict], columns=COLUMNS, minutes: bool = True) -> None:
    """Markdown: mean ± standard deviation over folds."""
    print("| recipe | TTA | folds | " + " | ".join(columns) + (" | train min |" if minutes else " |"))
    print("|---|---|---|" + "---|" * len(columns) + ("---|" if minutes else ""))
    for row in rows:
        cells = " | ".join(
            f"{row[c]['mean']:.3f} ± {row[c]['std']:.3f}" if c in row and row[c]["mean"] == row[c]["mean"] else "–"
            for c in columns
        )
        folds = ",".join(map(str, row["folds"]))
        tta = "yes" if row["tta"] else "no"
        print(
            f"| {row['recipe']} | {tta} | {folds} | {cells} |"
            + (f" {row['train_minutes_mean']:.1f} |" if minutes else "")
        )


def main(args: argparse.Namespace) -> list[dict]:
    """Print the protocol command, or run and summarize the folds."""
    if args.print_command:
        print(shlex.join(train_command(recipes.DEFAULT_RECIPE, args.data_dir, args.output_dir)))
        return []
    samples = find_pairs(args.data_dir)
    strata = build_cache(samples, 32, workers=2, cache_dir=Path(args.output_dir) / "cache").strata
    folds = stratified_folds([s.id for s in samples], strata, args.folds, args.seed)
    results = []
    for fold in args.only_folds if args.only_folds is not None else range(args.folds):
        for spec in args.recipes:  # folds outer: an interrupted run still compares recipes on the same folds
            results.append(run_fold(spec, fold, folds, args))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "tta"}), flush=True)
    rows = summarize(results)
    write_text_atomic(Path(args.output_dir) / "quality_folds.json", json.dumps(rows, indent=1))
    print(f"\n{args.folds} stratified folds (seed {args.seed}); full-resolution, left-out fold\n")
    print_table(rows)
    print("\nFound-lesion class accuracy (predicted lesions over a true polyp), per source\n")
    print_table(rows, LESION_CLASS_COLUMNS, minutes=False)
    for row in rows:
        if "fusion_sweep" in row:
            cells = ", ".join(f"{w}: {v['mean']:.3f} ± {v['std']:.3f}" for w, v in row["fusion_sweep"].items())
            print(f"\nfusion weight sweep, balanced accuracy ({row['recipe']}, TTA {row['tta']}): {cells}")
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
