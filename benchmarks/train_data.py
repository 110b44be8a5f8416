"""Training data path: the resized cache against decoding every step; and train-step speed.

    python benchmarks/train_data.py [--data-dir DIR] [--samples 48] [--image-size 256]

Without --data-dir it uses the shared competition data where present, else synthetic 1280x995 pairs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neopolyp_hf import NeoPolypUNet
from neopolyp_hf.preprocessing import normalize, resize_image, resize_mask
from neopolyp_hf.pretrained import IMAGENET_MEAN, IMAGENET_STD
from neopolyp_hf.synthetic import write_dataset
from neopolyp_hf.training import recipes
from neopolyp_hf.training.data import SegmentationDataset, build_cache, find_pairs, load_pair

ROOT = Path(__file__).resolve().parents[1]

REAL = ROOT.parent / "shared" / "data" / "bkai-igh-neopolyp"
MEAN, STD = list(IMAGENET_MEAN), list(IMAGENET_STD)


class DecodeEveryStep(torch.utils.data.Dataset):
    """What a loop without a cache does: decode the full-size JPEGs and resize on every access."""

    def __init__(self, samples, size, augment) -> None:
        self.samples, self.size, self.augment = samples, size, augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        image, mask = load_pair(self.samples[index])
        image, mask = resize_image(image, self.size), resize_mask(mask, self.size)
        out = self.augment(image=image, mask=mask)
        return normalize(out["image"], MEAN, STD), torch.from_numpy(out["mask"]).long()


def images_per_second(dataset, epochs: int = 2) -> float:
    start = time.perf_counter()
    for _ in range(epochs):
        for index in range(len(dataset)):
            dataset[index]
    return epochs * len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else REAL
        if not (data_dir / "train" / "train").is_dir():
            data_dir = write_dataset(Path(tmp) / "synthetic", args.samples, seed=0, height=995, width=1280)
        samples = find_pairs(data_dir)[: args.samples]
        augment = recipes.train_augmentation(recipes.RECIPES["neopolyp"])
        print(f"{len(samples)} pairs from {data_dir}, {args.image_size} px, neopolyp augmentations, 1 process")

        start = time.perf_counter()
        cache = build_cache(samples, args.image_size, workers=1)
        build_seconds = time.perf_counter() - start
        cached = images_per_second(SegmentationDataset(cache, MEAN, STD, augment), epochs=3)
        uncached = images_per_second(DecodeEveryStep(samples, args.image_size, augment), epochs=1)
        print(f"building the cache once: {build_seconds:.1f} s ({len(samples) / build_seconds:.1f} images/s)")
        print("| data path | images/s |")
        print("|---|---|")
        print(f"| decode + resize every step | {uncached:.1f} |")
        print(f"| resized cache (this project) | {cached:.1f} |")
        print(f"cache / decode-every-step: {cached / uncached:.1f}x")

        model = NeoPolypUNet(input_size=args.image_size).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_fn = recipes.build_loss(recipes.RECIPES["neopolyp"], torch.tensor([90, 8, 2]))
        loader = torch.utils.data.DataLoader(
            SegmentationDataset(cache, MEAN, STD, augment), batch_size=args.batch_size, shuffle=True, drop_last=True
        )
        batches = iter(loader)
        times = []
        for step in range(args.steps + 1):
            images, masks = next(batches, None) or next(iter(loader))
            start = time.perf_counter()
            loss = loss_fn(model(images), masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step:  # the first step warms up
                times.append(time.perf_counter() - start)
        rate = args.batch_size / float(np.median(times))
        print(
            f"train step (forward, backward, AdamW), batch {args.batch_size} at {args.image_size} px, "
            f"{torch.get_num_threads()} threads: {rate:.1f} images/s"
        )


if __name__ == "__main__":
    main()
