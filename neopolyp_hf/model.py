"""`NeoPolypUNet`: a U-Net (segmentation-models-pytorch) that saves to and loads from the Hub."""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import segmentation_models_pytorch as smp
import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, PyTorchModelHubMixin, hf_hub_download
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.repocard_data import EvalResult
from safetensors.torch import load_model
from torch import nn
from torch.nn import functional as F

from .classes import DEFAULT_CLASS_COLORS, DEFAULT_CLASS_NAMES
from .config import ConfigError, validate_config
from .inference import Segmenter

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
REPO_URL = "https://github.com/neopolyp/neopolyp"
MODEL_CARD_TEMPLATE = (Path(__file__).with_name("model_card.md")).read_text(encoding="utf-8")
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")
DATASET_ID = "bkai-igh-neopolyp"
INFERENCE_PRECISIONS = ("fp32", "bf16")


class ModelSourceError(OSError):
    """A model folder or Hub repo that cannot be loaded; the message names the source."""


class NeoPolypUNet(
    nn.Module,
    Segmenter,
    PyTorchModelHubMixin,
    library_name="neopolyp-hf",
    license="mit",
    tags=["image-segmentation", "medical-imaging", "polyp-segmentation", "colonoscopy", "unet"],
    pipeline_tag="image-segmentation",
    repo_url=REPO_URL,
    model_card_template=MODEL_CARD_TEMPLATE,
):
    """U-Net with a ResNet encoder classing pixels as background, neoplastic or non-neoplastic polyp.

    `predict(image)` (from `Segmenter`) segments one image at its original size; it puts the
    model in eval mode.
    """

    def __init__(
        self,
        encoder_name: str = "resnet34",
        encoder_weights: str | None = None,
        input_size: int = 256,
        mean: list[float] = IMAGENET_MEAN,
        std: list[float] = IMAGENET_STD,
        class_names: list[str] = list(DEFAULT_CLASS_NAMES),
        class_colors: list[list[int]] = [list(c) for c in DEFAULT_CLASS_COLORS],
        head: str = "classes",
    ) -> None:
        super().__init__()
        config = validate_config(
            {
                "encoder_name": encoder_name,
                "encoder_weights": encoder_weights,
                "input_size": input_size,
                "mean": mean,
                "std": std,
                "class_names": class_names,
                "class_colors": class_colors,
                "head": head,
            }
        )
        if encoder_weights is not None:
            check_encoder_weights_reachable(encoder_name, encoder_weights)
        try:
            self.unet = smp.Unet(
                encoder_name=encoder_name,
                encoder_weights=encoder_weights,
                in_channels=3,
                classes=len(config["class_names"]),
            )
        except KeyError as error:
            raise ConfigError(f"config field 'encoder_name': unknown encoder {encoder_name!r}") from error
        # The weights saved with the model already hold the encoder: loading must never download.
        self._hub_mixin_config = {**config, "encoder_weights": None}
        self.inference_precision = "fp32"
        self.channels_last = False

    @property
    def config(self) -> dict[str, Any]:
        """The model's config: everything inference needs (a copy)."""
        return copy.deepcopy(self._hub_mixin_config)

    @property
    def device(self) -> torch.device:
        """The device that holds the model's weights."""
        return next(self.parameters()).device

    def forward(self, images: torch.Tensor, head_outputs: bool = False) -> torch.Tensor:
        """Normalized images (N, 3, S, S) -> class scores (N, C, S, S) whose argmax is the prediction
        (logits, or log-probabilities for the polyp-then-class head); `head_outputs` gives the raw outputs."""
        outputs = self.unet(images)
        return outputs if head_outputs else head_scores(outputs, self._hub_mixin_config["head"])

    @property
    def _inference_config(self) -> dict[str, Any]:
        return self._hub_mixin_config

    def optimize_for_inference(self, precision: str = "fp32") -> NeoPolypUNet:
        """Eval mode and channels-last weights (oneDNN's fast convolution layout); `precision`
        "bf16" also runs the forward in bfloat16 autocast (CPUs with AVX512-BF16/AMX, GPUs)."""
        if precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision must be one of {INFERENCE_PRECISIONS}, got {precision!r}")
        self.inference_precision, self.channels_last = precision, True
        return self.eval().to(memory_format=torch.channels_last)

    def _forward_numpy(self, batch: np.ndarray) -> np.ndarray:
        # Inference needs eval mode (batch-norm statistics). Setting it, never toggling it back,
        # keeps concurrent predict calls on one model free of races.
        if self.training:
            self.eval()
        device = self.device
        images = torch.from_numpy(batch).to(device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.inference_precision == "bf16"),
        ):
            return self(images).float().cpu().numpy()

    # --- Hub integration -------------------------------------------------------------------

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        """Render `model_card.md` with the run's metrics, dataset and training arguments."""
        metrics: dict[str, float] = kwargs.pop("metrics", None) or {}
        dataset: str = kwargs.pop("dataset", None) or DATASET_ID
        card_data = ModelCardData(**self._hub_mixin_info.model_card_data.to_dict())
        card_data.datasets = [dataset]
        card_data.metrics = ["dice"]
        card_data.model_name = kwargs.pop("model_name", "NeoPolyp U-Net")
        card_data.eval_results = [
            EvalResult(
                task_type="image-segmentation",
                dataset_type=dataset,
                dataset_name=f"{dataset} (held-out validation split)",
                metric_type="dice",
                metric_name=name,
                metric_value=float(value),
            )
            for name, value in metrics.items()
        ] or None
        return ModelCard.from_template(
            card_data=card_data,
            template_str=self._hub_mixin_info.model_card_template,
            repo_url=self._hub_mixin_info.repo_url,
            model_config=json.dumps(self._hub_mixin_config, indent=2),
            encoder_name=self._hub_mixin_config["encoder_name"],
            metrics=metrics,
            dataset=dataset,
            **kwargs,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> NeoPolypUNet:
        """Load from a local folder or a Hub repo id; safetensors only, config validated."""
        source = str(pretrained_model_name_or_path)
        if os.path.isdir(source):
            _check_local_folder(Path(source))
        else:
            _fetch_from_hub(source, hub_constants.CONFIG_NAME, kwargs)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except json.JSONDecodeError as error:
            raise ConfigError(f"config.json of '{source}' is not valid JSON: {error}") from error

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        config: dict | None = None,
        **model_kwargs,
    ) -> NeoPolypUNet:
        if not isinstance(config, dict):
            raise ConfigError(f"'{model_id}' has no config.json object: it is not a NeoPolyp model")
        validate_config(config)
        model_kwargs = {k: v for k, v in model_kwargs.items() if k not in config}
        model = cls(**{**config, "encoder_weights": None}, **model_kwargs)
        if os.path.isdir(model_id):
            weights = os.path.join(model_id, hub_constants.SAFETENSORS_SINGLE_FILE)
        else:
            weights = _fetch_from_hub(
                model_id,
                hub_constants.SAFETENSORS_SINGLE_FILE,
                {
                    "revision": revision,
                    "cache_dir": cache_dir,
                    "force_download": force_download,
                    "local_files_only": local_files_only,
                    "token": token,
                },
            )
        load_model(model, weights, strict=strict, device=str(map_location))
        return model.eval()


def head_scores(outputs: torch.Tensor, head: str) -> torch.Tensor:
    """Class scores from a head's raw outputs: the logits themselves, or for "polyp_then_class"
    log P(background) = log(1 - p) and log P(class k) = log p + log q_k, with p the sigmoid of
    the polyp logit and q the softmax of the class logits."""
    if head == "classes":
        return outputs
    polyp, classes = outputs[:, :1], outputs[:, 1:]
    return torch.cat([F.logsigmoid(-polyp), F.logsigmoid(polyp) + F.log_softmax(classes, dim=1)], dim=1)


def _check_local_folder(folder: Path) -> None:
    if not (folder / hub_constants.CONFIG_NAME).is_file():
        raise ModelSourceError(f"model folder '{folder}' has no config.json")
    if not (folder / hub_constants.SAFETENSORS_SINGLE_FILE).is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ModelSourceError(
                f"model folder '{folder}' holds only pickle weights {pickles}; NeoPolyp loads "
                f"{hub_constants.SAFETENSORS_SINGLE_FILE} only and never unpickles files"
            )
        raise ModelSourceError(f"model folder '{folder}' has no {hub_constants.SAFETENSORS_SINGLE_FILE}")


def _fetch_from_hub(repo_id: str, filename: str, kwargs: dict[str, Any]) -> str:
    """Download one file of a Hub repo, turning the Hub's errors into one that names the repo."""
    download_args = {
        k: kwargs[k] for k in ("revision", "cache_dir", "force_download", "local_files_only", "token") if k in kwargs
    }
    revision = download_args.get("revision") or "main"
    try:
        return hf_hub_download(repo_id=repo_id, filename=filename, **download_args)
    except LocalEntryNotFoundError as error:
        raise ModelSourceError(
            f"'{repo_id}' is not a local folder, and {filename} of Hub repo '{repo_id}' (revision {revision}) "
            "is neither cached nor downloadable (offline, or the Hub is unreachable)"
        ) from error
    except (EntryNotFoundError, HfHubHTTPError) as error:
        if filename == hub_constants.SAFETENSORS_SINGLE_FILE:
            pickles = _pickle_files_in_repo(repo_id, download_args)
            if pickles:
                raise ModelSourceError(
                    f"Hub repo '{repo_id}' (revision {revision}) holds only pickle weights {pickles}; NeoPolyp "
                    f"loads {filename} only and never unpickles files"
                ) from error
        if isinstance(error, EntryNotFoundError):
            raise ModelSourceError(f"Hub repo '{repo_id}' (revision {revision}) has no {filename}") from error
        raise ModelSourceError(
            f"cannot load Hub repo '{repo_id}' (revision {revision}): {type(error).__name__}: "
            f"{str(error).splitlines()[0]}"
        ) from error
    except ValueError as error:  # HFValidationError: not a valid repo id nor an existing folder
        raise ModelSourceError(f"'{repo_id}' is neither a model folder nor a valid Hub repo id: {error}") from error


def _pickle_files_in_repo(repo_id: str, download_args: dict[str, Any]) -> list[str]:
    """Names of pickle checkpoints in a Hub repo (listing only: nothing is downloaded)."""
    try:
        files = HfApi(token=download_args.get("token")).list_repo_files(repo_id, revision=download_args.get("revision"))
    except Exception:  # the listing is only for a better message
        return []
    return sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))


def check_encoder_weights_reachable(encoder_name: str, encoder_weights: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, with advice, where pretrained encoder weights are neither cached nor downloadable."""
    settings = smp.encoders.encoders.get(encoder_name, {}).get("pretrained_settings", {}).get(encoder_weights)
    if settings is None or "repo_id" not in settings:
        return  # smp will raise its own error naming the encoder and weights.
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(settings["repo_id"], "model.safetensors"), str):
        return
    advice = f"'{encoder_weights}' weights for {encoder_name} are not cached and cannot be downloaded"
    if hub_constants.HF_HUB_OFFLINE:
        raise ConnectionError(f"{advice}: HF_HUB_OFFLINE is set. Use --encoder-weights none to train from scratch.")
    endpoint = urlparse(hub_constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout_s).close()
    except OSError as error:
        raise ConnectionError(
            f"{advice}: {endpoint.hostname}:{port} is unreachable ({error}). "
            "Use --encoder-weights none to train from scratch."
        ) from error
