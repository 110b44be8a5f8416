"""Train recipes under one budget on one seeded, stratified split; score each at full resolution.

    python benchmarks/quality.py --data-dir ../shared/data/bkai-igh-neopolyp --output-dir runs/quality \
        [--recipes reference neopolyp] [--epochs 30] [--image-size 128]

A recipe is a name from train/presets.py, optionally with overrides for ablations:
`neopolyp:minority_oversampling=1,class_weighted_ce=false`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))
sys.path.insert(0, str(ROOT))

from evaluate import evaluate_model, read_ids, select_samples  # noqa: E402

from neopolyp_hf import NeoPolypUNet  # noqa: E402

COLUMNS = ("dice_neoplastic", "dice_non_neoplastic", "dice_mean", "dice_per_image")


def train_recipe(spec: str, args: argparse.Namespace) -> tuple[Path, float]:
    """Run train/train.py for one recipe spec in its own process; returns (output dir, wall seconds)."""
    name, _, overrides = spec.partition(":")
    out = Path(args.output_dir) / spec.replace(":", "__").replace(",", "_").replace("=", "-")
    command = [
        sys.executable,
        str(ROOT / "train" / "train.py"),
        "--data-dir",
        args.data_dir,
        "--output-dir",
        str(out),
        "--recipe",
        name,
        "--epochs",
        str(args.epochs),
        "--image-size",
        str(args.image_size),
        "--encoder-weights",
        "none",
        "--seed",
        str(args.seed),
        "--num-overlays",
        "0",
    ]
    for override in filter(None, overrides.split(",")):
        command += ["--recipe-override", override]
    if (out / "best" / "config.json").is_file() and (out / "training_state.done").is_file():
        return out, float((out / "training_state.done").read_text())
    if (out / "last").is_dir():
        command.append("--resume")
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    (out / "training_state.done").write_text(f"{seconds:.1f}")
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--output-dir", default="runs/quality")
    parser.add_argument("--recipes", nargs="+", default=["reference", "neopolyp"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = []
    for spec in args.recipes:
        out, seconds = train_recipe(spec, args)
        model = NeoPolypUNet.from_pretrained(out / "best")
        samples = select_samples(args.data_dir, read_ids(out / "split.json"))
        for tta in (False, True):
            for consistency in (False, True):
                scores = evaluate_model(model, samples, tta=tta, lesion_consistency=consistency)
                rows.append(
                    {
                        "recipe": spec,
                        "tta": tta,
                        "lesion_consistency": consistency,
                        "train_minutes": round(seconds / 60, 1),
                        "val_images": len(samples),
                        **scores,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    (Path(args.output_dir) / "quality.json").write_text(json.dumps(rows, indent=1))
    print(
        f"\n{args.epochs} epochs at {args.image_size} px, from scratch, seed {args.seed}; "
        "Dice at full resolution on the held-out split\n"
    )
    print("| recipe | TTA | lesion consistency | " + " | ".join(COLUMNS) + " | train min |")
    print("|---|---|---|" + "---|" * len(COLUMNS) + "---|")
    for row in rows:
        print(
            f"| {row['recipe']} | {'yes' if row['tta'] else 'no'} | {'yes' if row['lesion_consistency'] else 'no'} | "
            + " | ".join(f"{row[c]:.3f}" for c in COLUMNS)
            + f" | {row['train_minutes']} |"
        )


if __name__ == "__main__":
    main()
