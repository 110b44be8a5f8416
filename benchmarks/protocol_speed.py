"""Training epoch times of encoders and input sizes, measured in one run, and what the CPU protocol
would take on the slowest CPU seen.

    python benchmarks/protocol_speed.py --data-dir ../shared/data/bkai-igh-neopolyp \\
        [--specs resnet34:none:128 timm-tf_efficientnet_lite0:imagenet:192 ...] [--epochs 2]

Each spec (encoder:weights:size) trains the default recipe for `--epochs` epochs on the usual 80 %
split, one after another in this process's machine (nothing else should run beside it); the last
epoch's time counts (the first pays for start-up). Speeds are compared only as ratios to the first
spec, measured in the same run. The slowest 2-core CPU seen trained the first spec (ResNet34 from
scratch at 128 px) in 98 s an epoch; each spec's epoch there is taken as that times its ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tables import (  # a sibling module of the benchmarks: Python puts a script's folder first on sys.path
    print_table,
    save_rows,
)

from neopolyp_hf.training import recipes

ROOT = Path(__file__).resolve().parents[1]
SLOWEST_CPU_BASELINE_S = 98.0  # ResNet34 from scratch, 128 px, one protocol epoch, on the slowest CPU seen
BUDGET_MINUTES = 40.0


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument(
        "--specs",
        nargs="+",
        default=[
            "resnet34:none:128",
            "timm-tf_efficientnet_lite0:imagenet:128",
            "timm-tf_efficientnet_lite0:imagenet:192",
            "timm-tf_efficientnet_lite0:imagenet:256",
        ],
        help="encoder:weights:size; the first is the baseline of the ratios",
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--output", default=None, help="a JSON file for the results")
    return parser


def epoch_seconds(spec: str, data_dir: str, epochs: int, workdir: Path) -> float:
    """The last epoch's wall time of train.py for one encoder:weights:size spec."""
    encoder, weights, size = spec.split(":")
    out = workdir / spec.replace(":", "_")
    command = [sys.executable, str(ROOT / "train" / "train.py"), "--data-dir", data_dir, "--output-dir", str(out)]
    command += ["--encoder-name", encoder, "--encoder-weights", weights, "--image-size", size]
    command += ["--epochs", str(epochs), "--num-overlays", "0", "--val-every", str(epochs)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    return float(history[-1]["epoch_seconds"])


def main(args: argparse.Namespace) -> list[dict]:
    """Time each spec, print the ratios and the projected protocol epochs on the slowest CPU."""
    protocol_epochs = recipes.RECIPES[recipes.DEFAULT_RECIPE].cpu_epochs
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for spec in args.specs:
            rows.append({"spec": spec, "epoch_s": epoch_seconds(spec, args.data_dir, args.epochs, Path(workdir))})
            print(f"{spec}: {rows[-1]['epoch_s']:.1f} s an epoch", flush=True)
    base = rows[0]["epoch_s"]
    for row in rows:
        row["ratio"] = row["epoch_s"] / base
        row["slowest_epoch_s"] = SLOWEST_CPU_BASELINE_S * row["ratio"]
        row["epochs_in_budget"] = int(BUDGET_MINUTES * 60 // row["slowest_epoch_s"])
        row["protocol_minutes_slowest"] = protocol_epochs * row["slowest_epoch_s"] / 60
    headers = ["encoder:weights:size", "epoch here (s)", f"ratio to {args.specs[0]}", "epoch on the slowest CPU (s)"]
    headers += [f"epochs in {BUDGET_MINUTES:g} min there", f"{protocol_epochs} epochs there (min)"]
    cells = [
        "spec",
        "epoch_s:.1f",
        "ratio:.2f",
        "slowest_epoch_s:.0f",
        "epochs_in_budget",
        "protocol_minutes_slowest:.1f",
    ]
    print_table(headers, [[format(row[c.split(":")[0]], c.partition(":")[2]) for c in cells] for row in rows])
    save_rows(args.output, rows)
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
