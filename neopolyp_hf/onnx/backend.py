"""ONNX export and an ONNX Runtime model with the same `predict` as `NeoPolypUNet`.

The ONNX file carries the model's config in its metadata, so it is self-contained; the
preprocessing and postprocessing are the package's own, only the forward call differs.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import write_atomic
from ..classifier.crops import lesion_crops, normalize_crops
from ..config import ModelConfig
from ..inference import Segmenter
from ..model import NeoPolypUNet, head_scores
from ..preprocessing import ImageInput, load_image, preprocess
from ..source import check_model_file

# The exports published beside a model's weights (neopolyp_hf.training.publish);
# NEOPOLYP_PRECISION=int8 loads the second.
ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
CONFIG_KEY = "neopolyp_config"
PRECISION_KEY = "precision"
PRECISIONS = ("fp32", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Kept in fp32: the first convolution (raw pixels in) and the last decoder block and head (class
# scores out, where an int8 rounding moves a mask boundary directly). Their FLOPs are small.
FP32_NODE_PREFIXES = (
    "/model/unet/encoder/conv1/",
    "/model/unet/decoder/blocks.4/",
    "/model/unet/segmentation_head/",
)
# The classifier keeps its first convolution (raw pixels in) and its final layer (the logit) in fp32.
CLASSIFIER_FP32_PREFIXES = ("/net/conv1/", "/net/fc/")


def _set_metadata(proto, config: dict[str, Any], precision: str) -> None:
    """The package's metadata: the model config (JSON) and the numeric precision."""
    del proto.metadata_props[:]
    for key, value in ((CONFIG_KEY, json.dumps(config)), (PRECISION_KEY, precision)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def classifier_graph_path(path: str | Path) -> Path:
    """Where the second stage's graph of an export lives: beside it, `model.onnx` -> `model.classifier.onnx`."""
    return Path(path).with_suffix(".classifier.onnx")


class _ScoresOnly(torch.nn.Module):
    """The model's class scores as a plain graph (no Python branch on head_outputs to trace).
    Made in eval mode: the exporter restores each module's mode afterwards, and a wrapper left in
    training mode would put the whole model back into it."""

    def __init__(self, model: NeoPolypUNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return head_scores(self.model.unet(images), self.model.config["head"])


def _export_graph(module: torch.nn.Module, dummy: torch.Tensor, names: tuple[str, str], config, path, opset) -> Path:
    import onnx

    def write(tmp: Path) -> None:
        # The TorchScript exporter, kept on purpose: torch's newer exporter needs onnxscript (one more
        # dependency) and its graphs have not been checked here against INT8 quantization and the parity
        # tests. Its deprecation notices are silenced here, and only here.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning
            )
            warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
            torch.onnx.export(
                module,
                (dummy,),
                str(tmp),
                input_names=[names[0]],
                output_names=[names[1]],
                dynamic_axes={names[0]: {0: "batch"}, names[1]: {0: "batch"}},
                opset_version=opset,
                dynamo=False,  # the TorchScript exporter: no onnxscript dependency
            )
        proto = onnx.load(str(tmp))
        _set_metadata(proto, config, "fp32")
        onnx.save(proto, str(tmp))

    return write_atomic(path, write)


ONNX_OPSET = 17


def export_onnx(model: NeoPolypUNet, path: str | Path, opset: int = ONNX_OPSET) -> Path:
    """Export with a dynamic batch dimension; the config goes into the file's metadata. A model with a
    second stage also gets its lesion classifier as a second graph (crops in, logits out) beside it."""
    size = model.config["input_size"]
    model = model.eval().to("cpu")
    if model.config.get("lesion_classifier"):
        crop = model.config["lesion_classifier"]["crop_size"]
        _export_graph(
            model.lesion_classifier,
            torch.zeros(1, 3, crop, crop),
            ("crops", "logits"),
            model.config,
            classifier_graph_path(path),
            opset,
        )
    return _export_graph(
        _ScoresOnly(model).eval(), torch.zeros(1, 3, size, size), ("images", "logits"), model.config, path, opset
    )


def quantize_onnx(
    fp32_path: str | Path,
    path: str | Path,
    calibration_images: Sequence[ImageInput],
    method: str = "minmax",
) -> Path:
    """Static INT8 quantization of an fp32 export: QDQ, per-channel int8 weights, uint8 activations
    (the u8s8 pairing that VNNI runs), calibrated on real frames through the package's preprocessing.
    A second-stage graph beside the export is quantized too, calibrated on crops of the lesions that
    the fp32 model finds in those frames (or of the frames' centres where it finds none)."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if not calibration_images:
        raise ValueError("INT8 calibration needs at least one image")
    source = OnnxSegmenter(fp32_path)
    if source.precision != "fp32":
        raise ValueError(f"'{fp32_path}' is already {source.precision}: quantize an fp32 export")
    config = source.config
    rgbs = [load_image(image) for image in calibration_images]
    frames = [preprocess(rgb, config["input_size"], config["mean"], config["std"])[None].numpy() for rgb in rgbs]
    if config.get("lesion_classifier"):
        settings = config["lesion_classifier"]
        crops = []
        for rgb in rgbs:
            boxes = [lesion.bbox for lesion in source.predict(rgb, second_stage=False).lesions[:4]]
            height, width = rgb.shape[:2]
            boxes = boxes or [(width // 4, height // 4, width // 2, height // 2)]
            crops.append(
                normalize_crops(
                    lesion_crops(rgb, boxes, settings["crop_size"], settings["margin"]), config["mean"], config["std"]
                )
            )
        _quantize_graph(
            classifier_graph_path(fp32_path),
            classifier_graph_path(path),
            crops,
            config,
            method,
            CLASSIFIER_FP32_PREFIXES,
        )
    return _quantize_graph(fp32_path, path, frames, config, method, FP32_NODE_PREFIXES)


def _quantize_graph(
    fp32_path: Path, path: str | Path, batches: list[np.ndarray], config: dict, method: str, keep_prefixes
) -> Path:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(batches)

        def get_next(self):
            batch = next(self.remaining, None)
            return None if batch is None else {input_name: batch}

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory() as workdir:
        prepared = Path(workdir) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))  # shape inference and graph clean-up first
        keep = [n.name for n in onnx.load(str(prepared)).graph.node if n.name.startswith(keep_prefixes)]
        quantized = Path(workdir) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=keep,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
        proto = onnx.load(str(quantized))
        _set_metadata(proto, config, "int8")
        return write_atomic(path, lambda tmp: onnx.save(proto, str(tmp)))


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"ONNX model '{path}' does not exist")
    check_model_file(path)  # a Git LFS pointer is named as such, not as a protobuf error
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ONNX Runtime's threads otherwise spin on the cores after each run, starving the JPEG
    # encoding and HTTP work beside them (the app) at no gain in latency (measured: 50.0 ms
    # with spinning, 49.4 without, one predict() on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors for bad files
        raise ValueError(f"'{path}' is not a loadable ONNX model: {error}") from error


class OnnxSegmenter(Segmenter):
    """An exported model (fp32 or INT8, as its metadata says: `precision`) run by ONNX Runtime on the CPU;
    a model with a second stage also loads its classifier graph (`classifier_graph_path`) from beside it."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        path = Path(path)
        self.session = _session(path, threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_KEY not in metadata:
            raise ValueError(f"ONNX model '{path}' has no {CONFIG_KEY} metadata: export it with train/export_onnx.py")
        self.config: dict[str, Any] = ModelConfig.from_dict(json.loads(metadata[CONFIG_KEY]), saved=True).to_dict()
        # Files exported before the precision key are fp32.
        self.precision = metadata.get(PRECISION_KEY, "fp32")
        if self.precision not in PRECISIONS:
            raise ValueError(f"ONNX model '{path}' has unknown precision {self.precision!r}")
        self.input_name = self.session.get_inputs()[0].name
        self.classifier_session = None
        if self.config.get("lesion_classifier"):
            graph = classifier_graph_path(path)
            if not graph.is_file():
                raise ValueError(
                    f"ONNX model '{path}' has a second stage, but its classifier graph '{graph.name}' is not beside it"
                )
            self.classifier_session = _session(graph, threads)

    def _classify_numpy(self, crops: np.ndarray) -> np.ndarray:
        session = self.classifier_session
        return session.run(None, {session.get_inputs()[0].name: crops.astype(np.float32, copy=False)})[0]

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, C, S, S) float32 class scores (logits or log-probabilities)."""
        return self.session.run(None, {self.input_name: batch.astype(np.float32, copy=False)})[0]

    def _forward_numpy(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)

    @property
    def _inference_config(self) -> dict[str, Any]:
        return self.config
