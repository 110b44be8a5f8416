"""Export a NeoPolyp model to ONNX with a dynamic batch dimension (the config rides in the metadata).

python train/export_onnx.py --model PATH_OR_REPO --output model.onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neopolyp_hf import NeoPolypUNet  # noqa: E402
from neopolyp_hf.model import ModelSourceError  # noqa: E402
from neopolyp_hf.onnx_backend import OnnxSegmenter, export_onnx  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub repo id")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()
    try:
        model = NeoPolypUNet.from_pretrained(args.model, revision=args.revision)
    except (ModelSourceError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    path = export_onnx(model, args.output, opset=args.opset)
    OnnxSegmenter(path)  # fails here, not in production, if the file does not load
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), input 'images' (N, 3, {model.config['input_size']}, "
        f"{model.config['input_size']}), output 'logits'"
    )


if __name__ == "__main__":
    main()
