"""What a serving app needs beyond `predict`: loading with provenance, and tables for display."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import ModelCard, hf_hub_download
from PIL import Image

from .atomic import write_atomic
from .inference import Prediction
from .masks import colorize_mask
from .model import ModelSourceError, NeoPolypUNet
from .synthetic import SYNTHETIC_DATASET


@dataclass(frozen=True)
class ModelInfo:
    """Where the served model came from and where it runs."""

    source: str
    revision: str
    device: str
    precision: str
    datasets: tuple[str, ...]

    @property
    def synthetic(self) -> bool:
        """True for a demo model trained on `neopolyp_hf.synthetic` data only."""
        return SYNTHETIC_DATASET in self.datasets


def pick_device() -> torch.device:
    """CUDA where there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _card_path(source: str, revision: str | None) -> Path | None:
    if os.path.isdir(source):
        path = Path(source) / "README.md"
        return path if path.is_file() else None
    try:
        return Path(hf_hub_download(source, "README.md", revision=revision))
    except Exception:  # a card is optional: provenance then says "unknown"
        return None


def load_model_for_serving(
    source: str, revision: str | None = None, precision: str = "fp32"
) -> tuple[NeoPolypUNet, ModelInfo]:
    """Load a model folder or Hub repo onto the best device, ready for inference; errors name the source."""
    if not source:
        raise ModelSourceError("no model source given: set NEOPOLYP_MODEL to a model folder or a Hub repo id")
    device = pick_device()
    try:
        model = NeoPolypUNet.from_pretrained(source, revision=revision).to(device).optimize_for_inference(precision)
    except (ModelSourceError, ValueError) as error:
        raise ModelSourceError(f"cannot load model '{source}': {error}") from error
    local = os.path.isdir(source)
    resolved = "local folder" if local else (revision or "main")
    card = _card_path(source, revision)
    datasets: tuple[str, ...] = ()
    if card is not None:
        if not local and card.parent.parent.name == "snapshots":
            resolved = f"{revision or 'main'} ({card.parent.name[:10]})"  # the commit that was pulled
        datasets = tuple(ModelCard.load(card).data.to_dict().get("datasets") or ())
    return model, ModelInfo(source, resolved, str(device), precision, datasets)


def percentages_summary(prediction: Prediction) -> dict[str, dict[str, float]]:
    """Per polyp class: % of the whole image and % of the polyp area, rounded for display."""
    return {
        name: {
            "percent_of_image": round(prediction.percentages[name], 3),
            "percent_of_polyp_area": round(prediction.polyp_percentages[name], 3),
        }
        for name in prediction.class_names[1:]
    }


LESION_HEADERS = ["lesion", "class", "area (px)", "area (% of image)", "confidence"]


def lesion_rows(prediction: Prediction) -> list[list]:
    """One display row per connected polyp region, largest first."""
    return [
        [i + 1, lesion.class_name, lesion.area_px, round(lesion.area_percent, 3), round(lesion.confidence, 3)]
        for i, lesion in enumerate(prediction.lesions)
    ]


def save_mask_png(prediction: Prediction, path: str | Path) -> Path:
    """The colour mask (the competition's colours) as a lossless PNG, written atomically."""
    picture = Image.fromarray(colorize_mask(prediction.mask, prediction.class_colors))
    return write_atomic(path, lambda tmp: picture.save(tmp, format="PNG"))
