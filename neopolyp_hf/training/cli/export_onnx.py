"""Export a NeoPolyp model to ONNX with a dynamic batch dimension (the config rides in the metadata).

neopolyp-export --model PATH_OR_REPO --output model.onnx [--opset 17]
neopolyp-export --model PATH_OR_REPO --output model_int8.onnx --int8 --calibration-dir DIR \\
    [--calibration-count 32] [--calibration-method minmax|entropy|percentile]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from neopolyp_hf import NeoPolypError, NeoPolypUNet
from neopolyp_hf.atomic import prepare_output
from neopolyp_hf.onnx.backend import CALIBRATION_METHODS, OnnxSegmenter, export_onnx, quantize_onnx
from neopolyp_hf.training.cli import console_command
from neopolyp_hf.training.data import IMAGE_SUFFIXES


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub repo id")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--int8", action="store_true", help="static INT8 quantization, calibrated on real frames")
    parser.add_argument("--calibration-dir", default=None, help="with --int8: a folder of real frames (or data root)")
    parser.add_argument("--calibration-count", type=int, default=32, help="with --int8: frames used, spread evenly")
    parser.add_argument("--calibration-method", default="minmax", choices=CALIBRATION_METHODS)
    return parser


def calibration_frames(folder: Path, count: int) -> list[Path]:
    """`count` images spread evenly over a folder (a competition data root: its train/train)."""
    if (folder / "train" / "train").is_dir():
        folder = folder / "train" / "train"
    if not folder.is_dir():
        raise SystemExit(f"error: calibration folder '{folder}' does not exist")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SystemExit(f"error: no {', '.join(IMAGE_SUFFIXES)} images in calibration folder '{folder}'")
    step = max(1, len(images) // max(1, count))
    return images[::step][:count]


def main(args: argparse.Namespace) -> Path:
    """Export (and quantize) the model; returns the written file."""
    if args.int8 and not args.calibration_dir:
        raise SystemExit("error: --int8 needs --calibration-dir, a folder of real frames to calibrate on")
    if args.calibration_count < 1:
        raise SystemExit("error: --calibration-count must be at least 1")
    try:
        model = NeoPolypUNet.from_pretrained(args.model, revision=args.revision)
    except NeoPolypError as error:
        raise SystemExit(f"error: {error}") from error
    try:
        output = prepare_output(args.output)  # before the export: a bad path costs no work
    except OSError as error:
        raise SystemExit(f"error: {error}") from error
    if args.int8:
        frames = calibration_frames(Path(args.calibration_dir), args.calibration_count)
        with tempfile.TemporaryDirectory() as workdir:
            fp32 = export_onnx(model, Path(workdir) / "fp32.onnx", opset=args.opset)
            path = quantize_onnx(fp32, output, frames, method=args.calibration_method)
            fp32_mb = fp32.stat().st_size / 1e6
    else:
        path = export_onnx(model, output, opset=args.opset)
        fp32_mb = path.stat().st_size / 1e6
    loaded = OnnxSegmenter(path)  # fails here, not in production, if the file does not load
    size = model.config["input_size"]
    print(
        f"wrote {path} ({loaded.precision}, {path.stat().st_size / 1e6:.1f} MB; fp32 {fp32_mb:.1f} MB), "
        f"input 'images' (N, 3, {size}, {size}), output 'logits'"
    )
    return path


run = console_command(get_args_parser, main)  # `neopolyp-export`, and train/export_onnx.py

if __name__ == "__main__":
    raise SystemExit(run())
