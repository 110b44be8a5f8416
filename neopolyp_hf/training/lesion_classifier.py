"""Training the lesion classifier on crops around the true lesions of the training split (for train/train.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.nn import functional as F

from ..atomic import write_atomic
from ..classes import NEOPLASTIC, POLYP_CLASSES
from ..classifier.crops import crop_square, lesion_square, normalize_crops
from ..classifier.model import LesionClassifier
from ..lesions import label_lesions, region_votes
from .data import EpochSampler, Sample, load_pair

CONTEXT = 2.0  # a stored patch spans this many crop sides, so that jitter and rotation stay inside it
MIN_AREA = 64  # px at full resolution: smaller true lesions are annotation specks, not polyps to class


@dataclass(frozen=True)
class LesionPatches:
    """Square patches of the original frames, each centred on one true lesion (its crop square is
    1 / CONTEXT of the patch), with the lesion's class: 1 neoplastic, 0 non-neoplastic."""

    patches: np.ndarray  # N x P x P x 3 uint8
    neoplastic: np.ndarray  # N uint8
    ids: list[str]  # the image each came from


def true_lesions(mask: np.ndarray, min_area: int = MIN_AREA) -> list[tuple[tuple[int, int, int, int], int]]:
    """(box, majority polyp class) of each 8-connected true polyp region of at least `min_area` px."""
    count, labels, stats = label_lesions(mask)
    votes = region_votes(labels, mask, count, max(POLYP_CLASSES) + 1)
    found = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area >= min_area:
            found.append(((x, y, w, h), int(votes[label, 1:].argmax()) + 1))
    return found


def extract_lesion_patches(
    samples: Sequence[Sample], crop_size: int, margin: float, workers: int = 2, progress: Callable | None = None
) -> LesionPatches:
    """Decode each full-resolution pair once and keep a context patch around each true lesion."""
    size = int(round(CONTEXT * crop_size))

    def work(sample: Sample) -> list[tuple[np.ndarray, int, str]]:
        image, mask = load_pair(sample)
        out = []
        for bbox, class_index in true_lesions(mask):
            center, side = lesion_square(bbox, margin)
            out.append((crop_square(image, center, CONTEXT * side, size), int(class_index == NEOPLASTIC), sample.id))
        return out

    rows = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for found in pool.map(work, samples):
            rows.extend(found)
            if progress is not None:
                progress(1)
    if not rows:
        return LesionPatches(np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.uint8), [])
    return LesionPatches(np.stack([r[0] for r in rows]), np.array([r[1] for r in rows], np.uint8), [r[2] for r in rows])


def crop_augmentation() -> A.Compose:
    """What a crop goes through after the box jitter: flips, right angles and colour changes."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.2, hue=0.03, p=0.8),
            A.GaussianBlur(blur_limit=(3, 5), p=0.1),
        ]
    )


class LesionCropDataset(torch.utils.data.Dataset):
    """(normalized crop, label) with the box jittered in shift, scale, aspect and angle, then augmented."""

    def __init__(self, patches: LesionPatches, crop_size: int, mean, std, augment: bool = True, seed: int = 0):
        self.patches, self.crop_size, self.mean, self.std = patches, crop_size, mean, std
        self.augment = crop_augmentation() if augment else None
        self.rng = np.random.default_rng(seed)
        if self.augment is not None:
            self.augment.set_random_seed(seed)

    def __len__(self) -> int:
        return len(self.patches.neoplastic)

    def crop(self, index: int) -> np.ndarray:
        """One crop of patch `index`: jittered when augmenting, else the inference crop exactly."""
        patch = self.patches.patches[index]
        middle = (patch.shape[1] - 1) / 2.0
        side = patch.shape[0] / CONTEXT
        if self.augment is None:
            return crop_square(patch, (middle, middle), side, self.crop_size)
        rng = self.rng
        center = (middle + rng.uniform(-0.12, 0.12) * side, middle + rng.uniform(-0.12, 0.12) * side)
        return crop_square(
            patch,
            center,
            side * rng.uniform(0.8, 1.25),
            self.crop_size,
            aspect=math.exp(rng.uniform(-0.2, 0.2)),
            angle=rng.uniform(-30, 30),
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop = self.crop(index)
        if self.augment is not None:
            crop = self.augment(image=crop)["image"]
        batch = normalize_crops(crop[None], self.mean, self.std)[0]
        return torch.from_numpy(batch), torch.tensor(float(self.patches.neoplastic[index]))


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32
    info.dataset.rng = np.random.default_rng(seed)
    if info.dataset.augment is not None:
        info.dataset.augment.set_random_seed(seed)


def balanced_weights(labels: np.ndarray) -> torch.Tensor:
    """Sampling weights that draw both classes equally often (the minority is drawn more)."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return torch.from_numpy(1.0 / np.maximum(counts[labels], 1.0))


def train_lesion_classifier(
    classifier: LesionClassifier,
    patches: LesionPatches,
    *,
    crop_size: int,
    mean,
    std,
    epochs: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    num_workers: int = 1,
    device: torch.device | str = "cpu",
    state_path: Path | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Train in place, balanced by sampling, BCE on the logit; with `state_path`, every epoch is saved
    there and a run that finds it resumes after its last finished epoch. Returns the per-epoch history."""
    if len(patches.neoplastic) < batch_size or len(set(patches.neoplastic.tolist())) < 2:
        raise ValueError(
            f"the lesion classifier needs lesions of both classes and at least a batch ({batch_size}); "
            f"the training split has {len(patches.neoplastic)} with classes {sorted(set(patches.neoplastic.tolist()))}"
        )
    device = torch.device(device)
    classifier.to(device)
    dataset = LesionCropDataset(patches, crop_size, mean, std, augment=True, seed=seed)
    steps = max(1, len(dataset) // batch_size)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(2, epochs * steps), pct_start=0.15, div_factor=20, final_div_factor=1e3
    )
    history, start = [], 1
    if state_path is not None and state_path.is_file():
        # Tensors and plain types only (weights_only): loading a resume state never unpickles code.
        state = torch.load(state_path, map_location=device, weights_only=True)
        classifier.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start = state["history"], state["epoch"] + 1
        log(f"lesion classifier: resuming after epoch {state['epoch']}")
    sampler = EpochSampler(balanced_weights(patches.neoplastic.astype(np.int64)).tolist(), seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        worker_init_fn=_seed_worker,
    )
    for epoch in range(start, epochs + 1):
        sampler.set_epoch(epoch)
        classifier.train()
        total, right, seen = 0.0, 0, 0
        for crops, labels in loader:
            crops, labels = crops.to(device), labels.to(device)
            logits = classifier(crops)
            loss = F.binary_cross_entropy_with_logits(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(labels)
            right += int(((logits > 0).float() == labels).sum())
            seen += len(labels)
        history.append({"epoch": epoch, "loss": total / seen, "accuracy": right / seen})
        log(f"lesion classifier epoch {epoch}/{epochs}  loss {total / seen:.4f}  balanced-batch acc {right / seen:.3f}")
        if state_path is not None:
            state = {
                "model": classifier.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": history,
            }
            write_atomic(state_path, lambda tmp, s=state: torch.save(s, tmp))
    classifier.eval()
    return history
