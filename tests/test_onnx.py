"""ONNX export and the ONNX Runtime backend against torch."""

import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT

from neopolyp_hf import NeoPolypUNet
from neopolyp_hf.onnx.backend import OnnxSegmenter, export_onnx


def test_onnx_export_has_dynamic_batch_and_agrees_with_torch(trained_model_dir, synthetic_data, tmp_path):
    model = NeoPolypUNet.from_pretrained(trained_model_dir / "best")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train" / "export_onnx.py"),
            "--model",
            str(trained_model_dir / "best"),
            "--output",
            str(tmp_path / "m.onnx"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    onnx_model = OnnxSegmenter(tmp_path / "m.onnx")
    assert onnx_model.config == model.config
    batch = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    assert onnx_model.forward(batch).shape == (3, 3, 64, 64)
    agree = total = 0
    for path in sorted((synthetic_data / "train" / "train").glob("*.jpeg"))[:8]:
        for tta in (False, True):
            a, b = model.predict(path, tta=tta).mask, onnx_model.predict(path, tta=tta).mask
            agree, total = agree + int((a == b).sum()), total + a.size
    assert agree / total >= 0.999


def test_onnx_agrees_with_torch_on_real_images(real_data, tmp_path):
    import torch

    torch.manual_seed(0)
    model = NeoPolypUNet(input_size=128).eval()  # real size, real images; untrained weights suffice here
    onnx_model = OnnxSegmenter(export_onnx(model, tmp_path / "m.onnx"))
    agree = total = 0
    for path in sorted((real_data / "test" / "test").glob("*.jpeg"))[:4]:
        a, b = model.predict(path).mask, onnx_model.predict(path).mask
        agree, total = agree + int((a == b).sum()), total + a.size
    assert agree / total >= 0.999


@pytest.fixture(scope="module")
def real_model_dir(real_data, tmp_path_factory):
    """A small model trained briefly on real pairs: confident enough that quantization error shows."""
    out = tmp_path_factory.mktemp("real_model")
    command = [sys.executable, str(ROOT / "train" / "train.py"), "--data-dir", str(real_data), "--output-dir", str(out)]
    command += ["--image-size", "64", "--epochs", "8", "--max-train-samples", "128", "--encoder-weights", "none"]
    command += ["--num-workers", "0", "--num-overlays", "0", "--batch-size", "8"]
    subprocess.run(command, check=True, capture_output=True, timeout=900)
    return out / "best"


@pytest.mark.slow
def test_int8_export_agrees_with_fp32_on_real_images(real_model_dir, real_data, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train" / "export_onnx.py"), "--model", str(real_model_dir)]
        + ["--output", str(tmp_path / "int8.onnx"), "--int8", "--calibration-dir", str(real_data)]
        + ["--calibration-count", "32"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "int8" in result.stdout
    fp32 = OnnxSegmenter(export_onnx(NeoPolypUNet.from_pretrained(real_model_dir), tmp_path / "fp32.onnx"))
    int8 = OnnxSegmenter(tmp_path / "int8.onnx")
    assert (fp32.precision, int8.precision) == ("fp32", "int8") and int8.config == fp32.config
    assert (tmp_path / "int8.onnx").stat().st_size < 0.35 * (tmp_path / "fp32.onnx").stat().st_size
    agree = total = 0
    for path in sorted((real_data / "test" / "test").glob("*.jpeg"))[:6]:  # frames calibration never saw
        a, b = fp32.predict(path).mask, int8.predict(path).mask
        agree, total = agree + int((a == b).sum()), total + a.size
    assert agree / total >= 0.99


def test_int8_needs_calibration_frames_and_an_fp32_source(trained_model_dir, tmp_path):
    export = [sys.executable, str(ROOT / "train" / "export_onnx.py"), "--model", str(trained_model_dir / "best")]
    result = subprocess.run(
        export + ["--output", str(tmp_path / "q.onnx"), "--int8"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0 and "--calibration-dir" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        export + ["--output", str(tmp_path / "q.onnx"), "--int8", "--calibration-dir", str(empty)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "no .jpeg" in result.stderr and not (tmp_path / "q.onnx").exists()
