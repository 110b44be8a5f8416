"""The serving loader: backend choice, the cached ONNX export, provenance and display tables."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from neopolyp_hf import ModelSourceError, NeoPolypUNet
from neopolyp_hf.onnx_backend import OnnxSegmenter
from neopolyp_hf.serving import load_segmenter


def test_auto_backend_on_cpu_is_a_cached_onnx_export(random_model, tmp_path):
    random_model.save_pretrained(tmp_path / "m")
    cache = tmp_path / "cache"
    segmenter, info = load_segmenter(str(tmp_path / "m"), onnx_cache=cache)
    assert isinstance(segmenter, OnnxSegmenter) and (info.backend, info.device, info.precision) == (
        "onnx",
        "cpu",
        "fp32",
    )
    (exported,) = cache.iterdir()
    stamp = exported.stat().st_mtime_ns
    again, _ = load_segmenter(str(tmp_path / "m"), onnx_cache=cache)  # a restart: the file is reused
    assert list(cache.iterdir()) == [exported] and exported.stat().st_mtime_ns == stamp
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3)).astype(np.uint8)
    assert (again.predict(image).mask == random_model.predict(image).mask).mean() > 0.999

    torch.manual_seed(1)  # other weights, another file
    NeoPolypUNet(input_size=64).save_pretrained(tmp_path / "other")
    load_segmenter(str(tmp_path / "other"), onnx_cache=cache)
    assert len(list(cache.iterdir())) == 2 and not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_torch_backend_and_bad_choices(random_model, tmp_path):
    random_model.save_pretrained(tmp_path / "m")
    model, info = load_segmenter(str(tmp_path / "m"), backend="torch")
    assert isinstance(model, NeoPolypUNet) and info.backend == "torch" and info.revision == "local folder"
    with pytest.raises(ModelSourceError, match="backend must be one of"):
        load_segmenter(str(tmp_path / "m"), backend="tensorrt")
    with pytest.raises(ModelSourceError, match="needs the onnx backend"):
        load_segmenter(str(tmp_path / "m"), backend="torch", precision="int8")
    with pytest.raises(ModelSourceError, match="model_int8.onnx"):
        load_segmenter(str(tmp_path / "m"), precision="int8")  # no INT8 export published beside it


def test_an_onnx_file_serves_with_its_own_precision(random_model, tmp_path):
    from neopolyp_hf.onnx_backend import export_onnx

    path = export_onnx(random_model, tmp_path / "m.onnx")
    segmenter, info = load_segmenter(str(path))
    assert isinstance(segmenter, OnnxSegmenter) and (info.backend, info.precision) == ("onnx", "fp32")
    os.remove(path)
    with pytest.raises(ModelSourceError, match="m.onnx"):
        load_segmenter(str(path))
