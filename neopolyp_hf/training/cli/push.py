"""Push an existing training run to the Hub again, without training: its best/ model with the ONNX and
INT8 exports, the card from the run's records and the calibration measured on its held-out split.

neopolyp-push --run-dir OUT --data-dir DATA --repo-id you/neopolyp [--private]
"""

from __future__ import annotations

import argparse

from neopolyp_hf import NeoPolypError
from neopolyp_hf.training.cli import console_command
from neopolyp_hf.training.data import find_pairs
from neopolyp_hf.training.publish import publish_run


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a train.py --output-dir (holds best/ and split.json)")
    parser.add_argument("--data-dir", required=True, help="the data it was trained on (for its held-out frames)")
    parser.add_argument("--repo-id", required=True, help="Hub repo, e.g. you/neopolyp")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    return parser


def main(args: argparse.Namespace) -> str:
    """Publish the run; returns the commit URL."""
    try:
        url = publish_run(args.run_dir, find_pairs(args.data_dir), args.repo_id, private=args.private)
    except (NeoPolypError, OSError) as error:
        raise SystemExit(f"error: {error}") from error
    print(f"pushed to {args.repo_id}: {url}")
    return url


run = console_command(get_args_parser, main)  # `neopolyp-push`, and train/push.py

if __name__ == "__main__":
    raise SystemExit(run())
