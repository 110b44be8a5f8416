"""Training recipes: augmentations, loss and optimizer settings, kept apart from the loop."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import albumentations as A
import cv2
import segmentation_models_pytorch as smp
import torch
from torch import nn


@dataclass(frozen=True)
class Recipe:
    """Everything a recipe decides; the command line may override lr, optimizer and scheduler."""

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
    extra: dict = field(default_factory=dict)


RECIPES = {
    "reference": Recipe(
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
    ),
    "neopolyp": Recipe(
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
    ),
}


def resolve_recipe(name: str, overrides: list[str] | None = None) -> Recipe:
    """A named recipe with KEY=VALUE overrides of its fields, for ablations."""
    recipe = RECIPES[name]
    changes = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or key not in recipe.__dataclass_fields__ or key in ("name", "description", "extra"):
            fields = [f for f in recipe.__dataclass_fields__ if f not in ("name", "description", "extra")]
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


def reference_augmentations() -> list[A.BasicTransform]:
    """The reference solution's augmentations, with its probabilities."""
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.RandomGamma(gamma_limit=(70, 120), p=0.2),
        A.RGBShift(r_shift_limit=10, g_shift_limit=10, b_shift_limit=10, p=0.3),
    ]


def train_augmentation(recipe: Recipe) -> A.Compose:
    """uint8 augmentations applied to the cached, already resized images and masks.

    Resize and normalization are not here: they come from `neopolyp_hf.preprocessing`,
    the same functions that `predict` uses.
    """
    transforms = reference_augmentations()
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
    return A.Compose(transforms)


class DiceCrossEntropyLoss(nn.Module):
    """Soft Dice plus (optionally class-weighted) cross-entropy."""

    def __init__(self, num_classes: int, dice_classes: list[int] | None, ce_weight: torch.Tensor | None) -> None:
        super().__init__()
        self.dice = smp.losses.DiceLoss(mode="multiclass", classes=dice_classes, from_logits=True)
        self.ce = nn.CrossEntropyLoss(weight=ce_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (N, C, H, W), target (N, H, W) long."""
        logits = logits.float()  # losses in fp32 under mixed precision
        return self.dice(logits, target) + self.ce(logits, target)


def class_weights(pixel_counts: torch.Tensor, power: float = 0.5) -> torch.Tensor:
    """Weights frequency ** -power, normalized to mean 1: rare classes count more (gently at 0.5)."""
    frequency = pixel_counts.double() / pixel_counts.sum().clamp(min=1)
    weights = frequency.clamp(min=1e-6) ** -power
    return (weights / weights.mean()).float()


def build_loss(recipe: Recipe, num_classes: int, pixel_counts: torch.Tensor) -> DiceCrossEntropyLoss:
    """The recipe's loss, with class weights from the training set's pixel counts."""
    dice_classes = list(range(1, num_classes)) if recipe.dice_polyp_classes_only else None
    weight = class_weights(pixel_counts, recipe.ce_weight_power) if recipe.class_weighted_ce else None
    return DiceCrossEntropyLoss(num_classes, dice_classes, weight)


def build_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam or AdamW."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, lr: float, total_steps: int):
    """A per-step LR schedule: constant, cosine decay, or one-cycle with a 10% warm-up."""
    if name == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=max(2, total_steps), pct_start=0.1, div_factor=25, final_div_factor=1e3
        )
    raise ValueError(f"unknown scheduler {name!r}")
