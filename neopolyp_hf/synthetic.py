"""Synthetic endoscopy-like frames with polyps, in the competition's layout.

Neoplastic polyps are dark red with a coarse, lobulated surface; non-neoplastic ones are
pale, smooth and yellowish. The difference is visible, so a model can learn it in minutes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .classes import NEOPLASTIC, NON_NEOPLASTIC
from .masks import colorize_mask

SYNTHETIC_DATASET = "neopolyp-synthetic"
MARKER_FILE = "neopolyp_synthetic.json"


def _smooth_noise(rng: np.random.Generator, height: int, width: int, scale: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: random values on a coarse grid, upsampled smoothly."""
    coarse = rng.random((max(2, height // scale), max(2, width // scale))).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def synthetic_pair(
    rng: np.random.Generator, height: int = 256, width: int = 320, max_polyps: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """One (HxWx3 uint8 image, HxW uint8 class mask) pair."""
    # Pink mucosa with folds (low-frequency shading) and fine texture.
    shading = 0.65 + 0.35 * _smooth_noise(rng, height, width, 40)
    texture = 0.9 + 0.1 * _smooth_noise(rng, height, width, 4)
    base = np.array([205, 120, 110], np.float32) * rng.uniform(0.85, 1.1, 3).astype(np.float32)
    image = base * (shading * texture)[..., None]
    mask = np.zeros((height, width), np.uint8)

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(1, max_polyps + 1))):
        cls = NEOPLASTIC if rng.random() < 0.6 else NON_NEOPLASTIC
        cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
        ry, rx = rng.uniform(0.08, 0.2) * height, rng.uniform(0.08, 0.2) * width
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        # A wobbly outline so that shapes are not perfect ellipses.
        radius = np.sqrt(u**2 + v**2) * (1 + 0.15 * (_smooth_noise(rng, height, width, 16) - 0.5))
        inside = radius < 1.0
        dome = np.clip(1.0 - radius, 0, 1)[..., None]
        if cls == NEOPLASTIC:
            surface = 0.6 + 0.4 * _smooth_noise(rng, height, width, 3)  # coarse, lobulated
            colour = np.array([150, 40, 45], np.float32)
        else:
            surface = 0.92 + 0.08 * _smooth_noise(rng, height, width, 24)  # smooth
            colour = np.array([235, 200, 150], np.float32)
        polyp = colour * surface[..., None] * (0.75 + 0.5 * dome)
        image = np.where(inside[..., None], polyp, image)
        mask[inside] = cls

    # Specular highlights and the endoscope's dark vignette.
    for _ in range(int(rng.integers(2, 6))):
        cv2.circle(
            image,
            (int(rng.integers(0, width)), int(rng.integers(0, height))),
            int(rng.integers(2, 6)),
            (255, 255, 255),
            -1,
        )
    r = np.sqrt(((yy - height / 2) / (height / 2)) ** 2 + ((xx - width / 2) / (width / 2)) ** 2)
    vignette = np.clip(1.25 - r, 0, 1) ** 0.8
    image = image * vignette[..., None] + rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_dataset(out_dir: str | Path, count: int, seed: int = 0, height: int = 256, width: int = 320) -> Path:
    """Write `count` pairs as `train/train/*.jpeg` and `train_gt/train_gt/*.jpeg` (RGB JPEG masks)."""
    out = Path(out_dir)
    images, masks = out / "train" / "train", out / "train_gt" / "train_gt"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    # Marks the folder as synthetic, so that models trained on it say so in their card.
    (out / MARKER_FILE).write_text(json.dumps({"dataset": SYNTHETIC_DATASET, "count": count, "seed": seed}))
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, mask = synthetic_pair(rng, height, width)
        name = f"synthetic_{seed}_{i:04d}.jpeg"
        Image.fromarray(image).save(images / name, quality=92)
        Image.fromarray(colorize_mask(mask)).save(masks / name, quality=92)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: write a synthetic dataset."""
    parser = argparse.ArgumentParser(description="Write synthetic polyp image/mask pairs in the competition layout.")
    parser.add_argument("--output-dir", required=True, help="folder to write train/ and train_gt/ into")
    parser.add_argument("--count", type=int, default=64, help="number of pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=320)
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    out = write_dataset(args.output_dir, args.count, args.seed, args.height, args.width)
    print(f"wrote {args.count} synthetic pairs to {out}")


if __name__ == "__main__":
    main()
