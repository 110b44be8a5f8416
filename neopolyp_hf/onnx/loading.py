"""A model on the backend of your choice: torch (fp32, bf16) or ONNX Runtime (fp32, INT8), from a
model folder, a Hub repo or an .onnx file. Used by the scripts in train/ and by the Space."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import ModelCard

from ..cache import cache_path, file_digest
from ..errors import ModelSourceError, NeoPolypError
from ..inference import Segmenter
from ..model import NeoPolypUNet
from ..source import fetch_model_file
from ..synthetic import SYNTHETIC_DATASET
from ..version import installed_version
from .backend import INT8_FILE, ONNX_OPSET, OnnxSegmenter, classifier_graph_path, export_onnx

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class ModelInfo:
    """Where the served model came from and where and how it runs."""

    source: str
    revision: str
    device: str
    backend: str  # "torch" or "onnx"
    precision: str
    datasets: tuple[str, ...]
    # The card's figures (name, value), as measured on the run's held-out split: pooled Dice per class, mean.
    metrics: tuple[tuple[str, float], ...] = ()
    commit: str | None = None  # the Hub commit the weights came from (None: local files)
    weights_sha256: str = ""  # of the weights file (or the .onnx export) loaded

    @property
    def synthetic(self) -> bool:
        """True for a demo model trained on `neopolyp_hf.synthetic` data only."""
        return SYNTHETIC_DATASET in self.datasets


def pick_device() -> torch.device:
    """CUDA where there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def onnx_cache_parts(model: NeoPolypUNet, weights: Path) -> dict[str, object]:
    """Everything an fp32 ONNX export is made from, its cache key's parts: the weights' SHA-256, the config
    as loaded (every field: a config-only change makes a new export), the exporter (torch), onnx and
    onnxruntime versions, this package's version (the export code) and the opset."""
    return {
        "weights": file_digest(weights),
        "config": model.config,
        "torch": torch.__version__,
        "onnx": installed_version("onnx"),
        "onnxruntime": installed_version("onnxruntime"),
        "neopolyp": installed_version(),
        "opset": ONNX_OPSET,
    }


def cached_onnx_export(model: NeoPolypUNet, weights: Path, cache_dir: Path | None = None) -> Path:
    """The model's fp32 ONNX export, made once per set of inputs (`onnx_cache_parts`) in the one cache
    (`neopolyp_hf.cache`; `cache_dir` instead, for tests) and reused by a restart or a second process."""
    path = cache_path("onnx", onnx_cache_parts(model, weights), ".onnx", cache_dir)
    if not path.is_file():  # the classifier graph is written first, so the main graph means both are there
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model, path, ONNX_OPSET)
    return path


def load_segmenter(
    source: str,
    revision: str | None = None,
    backend: str = "auto",
    precision: str = "fp32",
    onnx_cache: Path | None = None,
    threads: int | None = None,
) -> tuple[Segmenter, ModelInfo]:
    """A model folder, Hub repo or .onnx file, ready for inference on the chosen backend.

    `backend` "auto" is ONNX Runtime on a CPU and torch on CUDA. `precision` "bf16" is a torch
    option, "int8" an ONNX one (the model's `model_int8.onnx`). `threads` caps ONNX Runtime's
    intra-op threads (None: one per core). Errors name the source.
    """
    if backend not in BACKENDS:
        raise ModelSourceError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ModelSourceError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if not source:
        raise ModelSourceError("no model source given: set NEOPOLYP_MODEL to a model folder or a Hub repo id")
    try:
        if str(source).endswith(".onnx"):  # an export: its metadata says the config and precision
            segmenter = OnnxSegmenter(source, threads)
            digest = file_digest(source)
            return segmenter, ModelInfo(source, "local file", "cpu", "onnx", segmenter.precision, (), (), None, digest)
        device = pick_device()
        if backend == "auto":
            backend = "onnx" if device.type == "cpu" or precision == "int8" else "torch"
        if (backend, precision) in (("onnx", "bf16"), ("torch", "int8")):
            raise ModelSourceError(
                f"precision {precision} needs the {'torch' if precision == 'bf16' else 'onnx'} backend"
            )
        model = NeoPolypUNet.from_pretrained(source, revision=revision)
        files = model.files
        if backend == "onnx":
            device = torch.device("cpu")
            if precision == "int8":
                try:
                    int8 = fetch_model_file(files, INT8_FILE)
                except ModelSourceError as error:  # say how to make it, for a model trained here or pushed without it
                    raise ModelSourceError(
                        f"{error}; make it (calibrated on your frames) with: python train/export_onnx.py --model "
                        f"{files.source} --output {files.source}/{INT8_FILE} --int8 --calibration-dir DATA"
                    ) from error
                if model.config.get("lesion_classifier"):  # the second stage's graph, from the same commit
                    fetch_model_file(files, classifier_graph_path(INT8_FILE).name)
                segmenter = OnnxSegmenter(int8, threads)
            else:
                segmenter = OnnxSegmenter(cached_onnx_export(model, files.weights, onnx_cache), threads)
        else:
            segmenter = model.to(device).optimize_for_inference(precision)
    except (NeoPolypError, ValueError, OSError) as error:  # OSError: a full disk or read-only cache, named
        raise ModelSourceError(f"cannot load model '{source}': {error}") from error
    datasets: tuple[str, ...] = ()
    metrics: tuple[tuple[str, float], ...] = ()
    if files.card is not None:
        card = ModelCard.load(files.card).data
        datasets = tuple(card.to_dict().get("datasets") or ())
        metrics = tuple((r.metric_name, float(r.metric_value)) for r in card.eval_results or ())
    revision = files.describe_revision()
    digest = file_digest(files.weights)
    return segmenter, ModelInfo(
        source, revision, str(device), backend, precision, datasets, metrics, files.commit, digest
    )
