"""A smaller copy of competition-layout data, for machines that take only so many megabytes.

    python benchmarks/downsize_data.py --data-dir ../shared/data/bkai-igh-neopolyp --output-dir D --width 640

Images become JPEGs `--width` pixels wide (aspect kept); each mask is decoded at full size first
(robust to the JPEG noise in the colours), resized with nearest neighbour and written as a
lossless PNG in the pure class colours. The 602 shared pairs take 33 MB at 640 px instead of 185.
Scores on such a copy are at its resolution: a model's input size is far below it, so the
difference is small, but it is not the full-resolution protocol.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
from PIL import Image

from neopolyp_hf.masks import colorize_mask
from neopolyp_hf.training.data import IMAGE_DIR, MASK_DIR, Sample, find_pairs, load_pair


def downsize(sample: Sample, output: Path, width: int, quality: int) -> None:
    """One pair, resized to `width` and written under `output` in the same layout."""
    image, mask = load_pair(sample)
    height = round(mask.shape[0] * width / mask.shape[1])
    small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    labels = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    Image.fromarray(small).save(output / IMAGE_DIR / f"{sample.id}.jpeg", quality=quality)
    Image.fromarray(colorize_mask(labels)).save(output / MASK_DIR / f"{sample.id}.png", optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality of the images")
    args = parser.parse_args()
    output = Path(args.output_dir)
    (output / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (output / MASK_DIR).mkdir(parents=True, exist_ok=True)
    samples = find_pairs(args.data_dir)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: downsize(s, output, args.width, args.quality), samples))
    print(f"{len(samples)} pairs at {args.width} px wide in {output}")


if __name__ == "__main__":
    main()
