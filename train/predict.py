"""Segment a folder of images (the competition's submission CSV, optional lossless PNG masks), or a video.

python train/predict.py --model PATH_OR_REPO --images DIR --output submission.csv
    [--masks-dir DIR] [--save-probabilities DIR] [--tta] [--batch-size N] [--backend auto|torch|onnx]
    [--precision fp32|bf16|int8] [--sample-submission CSV] [--skip-bad]

python train/predict.py --model PATH_OR_REPO --video IN --output-video OUT.mp4
    [--timeline timeline.csv] [--tracks tracks.csv] [--save-masks DIR] [--every N] [--no-tracking]
"""

from neopolyp_hf.training.cli.predict import *  # noqa: F403  the functions, as a checkout's scripts always offered them
from neopolyp_hf.training.cli.predict import run

if __name__ == "__main__":
    raise SystemExit(run())
