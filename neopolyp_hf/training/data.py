"""The competition's data layout: pairing, validation, stratified split and the resized cache."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_atomic
from ..classes import CLASS_NAMES, MINORITY_CLASS, POLYP_CLASSES
from ..errors import DataError, ImageLoadError
from ..masks import decode_mask
from ..preprocessing import load_image, normalize, resize_image, resize_mask

IMAGE_DIR = Path("train") / "train"
MASK_DIR = Path("train_gt") / "train_gt"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
CACHE_FORMAT = 2  # bumped when what the cache stores changes (2: strata named by class names)


@dataclass(frozen=True)
class Sample:
    """One image/mask pair, matched by file stem."""

    id: str
    image_path: Path
    mask_path: Path


def _list_images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"expected folder '{folder}' does not exist (competition layout: {IMAGE_DIR}, {MASK_DIR})")
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"unexpected file '{path}' (expected {', '.join(IMAGE_SUFFIXES)} images only)")
        files[path.stem] = path
    return files


def find_pairs(data_dir: str | Path) -> list[Sample]:
    """All image/mask pairs of a competition-layout folder, sorted by id; mismatches are errors."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder '{root}' does not exist")
    images, masks = _list_images(root / IMAGE_DIR), _list_images(root / MASK_DIR)
    if not images:
        raise DataError(f"no images in '{root / IMAGE_DIR}'")
    without_mask = sorted(set(images) - set(masks))
    if without_mask:
        raise DataError(
            f"image '{images[without_mask[0]]}' has no mask in '{root / MASK_DIR}' "
            f"({len(without_mask)} image(s) without a mask)"
        )
    without_image = sorted(set(masks) - set(images))
    if without_image:
        raise DataError(
            f"mask '{masks[without_image[0]]}' has no image in '{root / IMAGE_DIR}' "
            f"({len(without_image)} extra mask(s))"
        )
    return [Sample(i, images[i], masks[i]) for i in sorted(images)]


def load_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution (RGB image, class mask) of a sample; the mask is decoded before any resize."""
    try:
        image = load_image(sample.image_path)
        mask = decode_mask(load_image(sample.mask_path))
    except ImageLoadError as error:
        raise DataError(str(error)) from error
    if image.shape[:2] != mask.shape:
        raise DataError(f"image '{sample.image_path}' is {image.shape[:2]} but its mask is {mask.shape}")
    return image, mask


def stratum(mask: np.ndarray) -> str:
    """Which polyp classes a mask holds, as a name: their class names joined by '+', or 'none'."""
    present = [CLASS_NAMES[c] for c in POLYP_CLASSES if (mask == c).any()]
    return "+".join(present) or "none"


def holds_minority_class(stratum_name: str) -> bool:
    """Whether an image of this stratum holds the minority polyp class."""
    return CLASS_NAMES[MINORITY_CLASS] in stratum_name.split("+")


def _shuffled_strata(ids: Sequence[str], strata: Sequence[str], seed: int) -> list[list[str]]:
    """The ids grouped by stratum (strata in sorted order), each group in a seeded random order;
    independent of the order the ids come in."""
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = {}
    for sample_id, group in sorted(zip(ids, strata, strict=True)):
        by_stratum.setdefault(group, []).append(sample_id)
    return [[by_stratum[g][i] for i in rng.permutation(len(by_stratum[g]))] for g in sorted(by_stratum)]


def stratified_split(
    ids: Sequence[str], strata: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Seeded (train, val) split by stratum; independent of the order the ids come in."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train, val = [], []
    for members in _shuffled_strata(ids, strata, seed):
        n_val = int(round(len(members) * val_fraction))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    if not train or not val:
        raise DataError(f"cannot split {len(ids)} sample(s) into non-empty train and val sets")
    return sorted(train), sorted(val)


def stratified_folds(ids: Sequence[str], strata: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """Seeded, stratified k-fold partition of `ids`: each stratum dealt round-robin over the folds."""
    if folds < 2 or folds > len(ids):
        raise DataError(f"cannot make {folds} folds of {len(ids)} sample(s): use 2 to {len(ids)} folds")
    result: list[list[str]] = [[] for _ in range(folds)]
    offset = 0  # continue the deal across strata so that the folds' sizes differ by at most one
    for members in _shuffled_strata(ids, strata, seed):
        for position, sample_id in enumerate(members):
            result[(offset + position) % folds].append(sample_id)
        offset += len(members)
    return [sorted(fold) for fold in result]


@dataclass
class ResizedCache:
    """Images and masks decoded once and resized to the training size, kept in memory."""

    ids: list[str]
    images: np.ndarray  # N x S x S x 3 uint8
    masks: np.ndarray  # N x S x S uint8
    strata: list[str]

    def subset(self, ids: Sequence[str]) -> ResizedCache:
        """The cache restricted to `ids`, in that order."""
        index = {sample_id: i for i, sample_id in enumerate(self.ids)}
        rows = [index[i] for i in ids]
        return ResizedCache(list(ids), self.images[rows], self.masks[rows], [self.strata[r] for r in rows])


def _cache_key(samples: Sequence[Sample], size: int) -> str:
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{size}".encode())
    for s in samples:
        stat_i, stat_m = os.stat(s.image_path), os.stat(s.mask_path)
        digest.update(f"{s.id}:{stat_i.st_size}:{stat_i.st_mtime_ns}:{stat_m.st_size}:{stat_m.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def build_cache(
    samples: Sequence[Sample],
    size: int,
    workers: int = 2,
    cache_dir: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> ResizedCache:
    """Decode and resize every sample once (in threads: cv2 and PIL release the GIL).

    With `cache_dir`, the arrays are also stored as one .npz keyed by the files' names,
    sizes and times, so that a resumed or repeated run skips the decoding.
    """
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"cache_{size}px_{_cache_key(samples, size)}.npz"
        if path.is_file():
            with np.load(path) as stored:
                return ResizedCache(
                    json.loads(str(stored["ids"])), stored["images"], stored["masks"], json.loads(str(stored["strata"]))
                )
    images = np.empty((len(samples), size, size, 3), np.uint8)
    masks = np.empty((len(samples), size, size), np.uint8)
    strata = [""] * len(samples)

    def work(i: int) -> None:
        image, mask = load_pair(samples[i])
        images[i], masks[i] = resize_image(image, size), resize_mask(mask, size)
        strata[i] = stratum(mask)  # from the full-resolution mask: tiny polyps count too

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(work, range(len(samples))):
            if progress is not None:
                progress(1)
    cache = ResizedCache([s.id for s in samples], images, masks, strata)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"ids": json.dumps(cache.ids), "images": images, "masks": masks, "strata": json.dumps(strata)}

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a handle: np.savez would add .npz to a bare path
                np.savez(handle, **arrays)

        write_atomic(path, save)
    return cache


class SegmentationDataset(torch.utils.data.Dataset):
    """(normalized image tensor, long mask tensor) pairs from the resized cache, augmented on the fly, and
    resized to `size` px where it is given and differs from the cache's (smaller epochs of a size schedule)."""

    def __init__(
        self,
        cache: ResizedCache,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Callable[..., dict] | None = None,
        size: int | None = None,
    ) -> None:
        self.cache, self.mean, self.std, self.augment = cache, list(mean), list(std), augment
        self.size = size

    def __len__(self) -> int:
        return len(self.cache.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.cache.images[index], self.cache.masks[index]
        if self.augment is not None:
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if self.size and image.shape[0] != self.size:
            image, mask = resize_image(image, self.size), resize_mask(mask, self.size)
        return normalize(image, self.mean, self.std), torch.from_numpy(np.ascontiguousarray(mask)).long()


class EpochSampler(torch.utils.data.Sampler[int]):
    """The one sampler of both training loops (the segmenter's and the lesion classifier's): a seeded
    shuffle per epoch; with unequal weights, a weighted draw with replacement. The draw depends only on
    the seed and the epoch (`set_epoch`), so a resumed run draws what an unbroken one would."""

    def __init__(self, weights: list[float], seed: int) -> None:
        self.weights = torch.tensor(weights, dtype=torch.double)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.weights)
        if bool((self.weights == self.weights[0]).all()):
            return iter(torch.randperm(n, generator=generator).tolist())
        return iter(torch.multinomial(self.weights, n, replacement=True, generator=generator).tolist())
