"""End-of-run training reports: training curves and validation overlays as PNG (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ..atomic import write_atomic  # noqa: E402
from ..masks import overlay_mask  # noqa: E402
from ..model import NeoPolypUNet  # noqa: E402
from .data import Sample, load_pair  # noqa: E402


def save_training_curves(history: list[dict], path: Path) -> None:
    """Loss (train, val) and val Dice (per class, mean) per epoch."""
    figure, (loss_axis, dice_axis) = plt.subplots(1, 2, figsize=(11, 4))
    # Markers: a run of one epoch (or one validation) is a single point, which a bare line does not draw.
    loss_axis.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], marker="o", label="train")
    history = [h for h in history if "val_loss" in h]  # the epochs that were validated
    epochs = [h["epoch"] for h in history]
    loss_axis.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_axis.legend()
    for key, label in [
        ("val_dice_neoplastic", "neoplastic"),
        ("val_dice_non_neoplastic", "non-neoplastic"),
        ("val_dice_mean", "mean"),
    ]:
        dice_axis.plot(epochs, [h[key] for h in history], marker="o", label=label)
    dice_axis.set(xlabel="epoch", ylabel="pooled Dice", title="Validation Dice", ylim=(0, 1))
    dice_axis.legend()
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)


def save_validation_overlays(model: NeoPolypUNet, samples: list[Sample], folder: Path) -> None:
    """For each sample, truth (left) beside prediction (right), at half the original size, each panel
    labelled in its top-left corner."""
    folder.mkdir(parents=True, exist_ok=True)
    colors = model.config["class_colors"]
    for sample in samples:
        image, truth = load_pair(sample)
        prediction = model.predict(image)
        panels = [np.array(overlay_mask(image, truth, colors)), np.array(prediction.overlay)]
        for panel, label in zip(panels, ("truth", "prediction"), strict=True):
            label_panel(panel, label)
        side_by_side = np.concatenate(panels, axis=1)
        picture = Image.fromarray(side_by_side)
        picture = picture.resize((picture.width // 2, picture.height // 2))
        write_atomic(folder / f"{sample.id}.png", lambda tmp, p=picture: p.save(tmp, format="PNG"))


def label_panel(panel: np.ndarray, text: str) -> None:
    """Write `text` in white on a black box in the top-left corner of an RGB panel, in place, sized to be
    readable after the overlays are halved."""
    scale = max(0.6, panel.shape[1] / 600)
    thickness = max(1, round(scale * 2))
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.rectangle(panel, (0, 0), (width + 12, height + baseline + 12), (0, 0, 0), -1)
    cv2.putText(panel, text, (6, height + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def save_reliability_plot(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Reliability diagram of the polyp classes' pixel probabilities: observed frequency against the
    mean predicted probability per bin (the diagonal is perfect calibration), with the pixel counts."""
    figure, (curve_axis, count_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
    curve_axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for name, curve in curves.items():
        if name == "top_class":
            continue
        predicted, observed = np.array(curve["mean_probability"]), np.array(curve["frequency"])
        keep = np.isfinite(predicted)
        curve_axis.plot(predicted[keep], observed[keep], marker="o", label=name.replace("_", "-"))
        count_axis.semilogy(predicted[keep], np.array(curve["count"])[keep], marker=".", label=name.replace("_", "-"))
    curve_axis.set(xlabel="predicted probability", ylabel="observed frequency", title="Reliability", xlim=(0, 1))
    curve_axis.legend()
    count_axis.set(xlabel="predicted probability", ylabel="pixels per bin", title="Pixels per bin")
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
