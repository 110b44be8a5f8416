"""Evaluate a model at full resolution on competition-layout data: pixel Dice and lesion-level metrics, as JSON.

neopolyp-evaluate --model PATH_OR_REPO_OR_ONNX --data-dir DIR [--ids FILE] [--tta] [--no-lesion-consistency]
    [--backend auto|torch|onnx] [--precision fp32|bf16|int8] [--reliability-plot PNG]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from neopolyp_hf import NeoPolypError
from neopolyp_hf.onnx.loading import BACKENDS, PRECISIONS, load_segmenter
from neopolyp_hf.training.cli import console_command
from neopolyp_hf.training.evaluation import evaluate_model, read_ids, select_samples


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description="Full-resolution Dice of a NeoPolyp model.")
    parser.add_argument("--model", required=True, help="model folder, Hub repo id, or an exported .onnx file")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument(
        "--backend", default="auto", choices=BACKENDS, help="auto: ONNX Runtime on a CPU, torch on CUDA"
    )
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="as in train/predict.py")
    parser.add_argument("--data-dir", required=True, help="competition layout: train/train, train_gt/train_gt")
    parser.add_argument(
        "--ids",
        default=None,
        help="restrict to these ids: a split.json from training (its 'val' list) or one id per line",
    )
    parser.add_argument("--tta", action="store_true", help="average over horizontal and vertical flips")
    parser.add_argument("--reliability-plot", default=None, metavar="PNG", help="write the reliability diagram here")
    parser.add_argument(
        "--no-lesion-consistency", action="store_true", help="skip the step that gives each connected polyp one class"
    )
    return parser


def main(args: argparse.Namespace) -> dict:
    """Evaluate and print one JSON object."""
    try:
        model, info = load_segmenter(args.model, args.revision, args.backend, args.precision)
        samples = select_samples(args.data_dir, read_ids(args.ids) if args.ids else None)
    except (NeoPolypError, OSError) as error:
        raise SystemExit(f"error: {error}") from error
    started = time.perf_counter()
    curves: dict = {}
    result = evaluate_model(
        model, samples, tta=args.tta, lesion_consistency=not args.no_lesion_consistency, reliability=curves
    )
    if args.reliability_plot:
        from neopolyp_hf.training.reporting import save_reliability_plot  # matplotlib: a training dependency

        save_reliability_plot(curves, Path(args.reliability_plot))
    result.update(
        images=len(samples),
        backend=info.backend,
        precision=info.precision,
        tta=args.tta,
        lesion_consistency=not args.no_lesion_consistency,
        seconds=round(time.perf_counter() - started, 1),
    )
    print(json.dumps(result, indent=2))
    return result


run = console_command(get_args_parser, main)  # `neopolyp-evaluate`, and train/evaluate.py

if __name__ == "__main__":
    raise SystemExit(run())
