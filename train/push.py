"""Push an existing training run to the Hub again, without training: its best/ model with the ONNX and
INT8 exports, the card from the run's records and the calibration measured on its held-out split.

python train/push.py --run-dir OUT --data-dir DATA --repo-id you/neopolyp [--private]
"""

from neopolyp_hf.training.cli.push import *  # noqa: F403  the functions, as a checkout's scripts always offered them
from neopolyp_hf.training.cli.push import run

if __name__ == "__main__":
    raise SystemExit(run())
