"""Evaluate a model at full resolution on competition-layout data: pixel Dice and lesion-level metrics, as JSON.

python train/evaluate.py --model PATH_OR_REPO_OR_ONNX --data-dir DIR [--ids FILE] [--tta] [--no-lesion-consistency]
    [--backend auto|torch|onnx] [--precision fp32|bf16|int8] [--reliability-plot PNG]
"""

from neopolyp_hf.training.cli.evaluate import *  # noqa: F403  the functions, as a checkout's scripts always offered them
from neopolyp_hf.training.cli.evaluate import run

if __name__ == "__main__":
    raise SystemExit(run())
