"""ONNX export and an ONNX Runtime model with the same `predict` as `NeoPolypUNet`.

The ONNX file carries the model's config in its metadata, so it is self-contained; the
preprocessing and postprocessing are the package's own, only the forward call differs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import validate_config
from .inference import Segmenter
from .model import NeoPolypUNet

CONFIG_KEY = "neopolyp_config"


def export_onnx(model: NeoPolypUNet, path: str | Path, opset: int = 17) -> Path:
    """Export with a dynamic batch dimension; the config goes into the file's metadata."""
    import onnx

    path = Path(path)
    size = model.config["input_size"]
    model = model.eval().to("cpu")
    dummy = torch.zeros(1, 3, size, size)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with torch.inference_mode():
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,  # the TorchScript exporter: no onnxscript dependency
            )
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = CONFIG_KEY, json.dumps(model.config)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class OnnxSegmenter(Segmenter):
    """An exported model run by ONNX Runtime on the CPU."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model '{path}' does not exist")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors for bad files
            raise ValueError(f"'{path}' is not a loadable ONNX model: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_KEY not in metadata:
            raise ValueError(f"ONNX model '{path}' has no {CONFIG_KEY} metadata: export it with train/export_onnx.py")
        self.config: dict[str, Any] = validate_config(json.loads(metadata[CONFIG_KEY]))
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, C, S, S) float32 logits."""
        return self.session.run(None, {self.input_name: batch.astype(np.float32, copy=False)})[0]

    def _forward_numpy(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)

    @property
    def _inference_config(self) -> dict[str, Any]:
        return self.config
