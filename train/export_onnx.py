"""Export a NeoPolyp model to ONNX with a dynamic batch dimension (the config rides in the metadata).

python train/export_onnx.py --model PATH_OR_REPO --output model.onnx [--opset 17]
python train/export_onnx.py --model PATH_OR_REPO --output model_int8.onnx --int8 --calibration-dir DIR \\
    [--calibration-count 32] [--calibration-method minmax|entropy|percentile]
"""

from neopolyp_hf.training.cli.export_onnx import *  # noqa: F403  the functions, as a checkout's scripts always offered them
from neopolyp_hf.training.cli.export_onnx import run

if __name__ == "__main__":
    raise SystemExit(run())
