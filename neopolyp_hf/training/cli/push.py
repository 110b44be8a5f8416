"""Publish a training run without training again: its best/ model with the ONNX and INT8 exports, the card
from the run's records and the calibration measured on its held-out split; to the Hub, to a local folder
(the whole bundle, no Hub needed), or both. The Hub and its token are checked before any work.

neopolyp-push --run-dir OUT --data-dir DATA --repo-id you/neopolyp [--private] [--output-dir BUNDLE]
neopolyp-push --run-dir OUT --data-dir DATA --output-dir BUNDLE
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
    parser.add_argument("--repo-id", default=None, help="Hub repo to push to, e.g. you/neopolyp")
    parser.add_argument("--output-dir", default=None, help="write the publishable bundle here (the folder pushed)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    return parser


def main(args: argparse.Namespace) -> str:
    """Publish the run; returns the commit URL, or the bundle's folder where nothing is pushed."""
    if not args.repo_id and not args.output_dir:
        raise SystemExit("error: give --repo-id to push to the Hub, --output-dir to write the bundle locally, or both")
    try:
        where = publish_run(
            args.run_dir, find_pairs(args.data_dir), args.repo_id, private=args.private, output_dir=args.output_dir
        )
    except (NeoPolypError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    if args.output_dir:
        print(f"bundle written to {args.output_dir}")
    if args.repo_id:
        print(f"pushed to {args.repo_id}: {where}")
    return where


run = console_command(get_args_parser, main)  # `neopolyp-push`, and train/push.py

if __name__ == "__main__":
    raise SystemExit(run())
