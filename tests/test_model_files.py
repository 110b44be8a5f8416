"""Broken model files and the cache of derived files: a named error with its fix, never a stale export."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import load_script

from neopolyp_hf import ModelSourceError, NeoPolypUNet
from neopolyp_hf.cache import cache_root
from neopolyp_hf.onnx import loading
from neopolyp_hf.onnx.loading import load_segmenter

POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 26518040\n"
)


def _png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def model_dir(random_model, tmp_path):
    random_model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_a_weights_file_that_is_a_git_lfs_pointer_is_named_with_its_fix(model_dir, tmp_path):
    (model_dir / "model.safetensors").write_text(POINTER)
    with pytest.raises(
        ModelSourceError, match=r"Git LFS pointer \(\d+ bytes\) to a file of 26,518,040 bytes.*git lfs pull"
    ):
        NeoPolypUNet.from_pretrained(model_dir)
    with pytest.raises(ModelSourceError, match="model.safetensors' is a Git LFS pointer"):
        load_segmenter(str(model_dir))
    predict = load_script("predict")
    images = tmp_path / "images"
    images.mkdir()
    (images / "frame.png").write_bytes(_png())
    args = ["--model", str(model_dir), "--images", str(images), "--output", str(tmp_path / "s.csv")]
    with pytest.raises(SystemExit, match="Git LFS pointer"):
        predict.main(predict.get_args_parser().parse_args(args))


def test_a_weights_file_cut_short_says_how_much_is_there(model_dir):
    weights = model_dir / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelSourceError, match=rf"cut short: {len(whole) // 2:,} of {len(whole):,} bytes"):
        NeoPolypUNet.from_pretrained(model_dir)
    weights.write_bytes(whole[:100])  # not even the whole header
    with pytest.raises(ModelSourceError, match="cut short or not a safetensors file"):
        NeoPolypUNet.from_pretrained(model_dir)


def test_an_onnx_file_that_is_a_git_lfs_pointer_is_named(tmp_path):
    (tmp_path / "model_int8.onnx").write_text(POINTER)
    with pytest.raises(ModelSourceError, match="model_int8.onnx' is a Git LFS pointer"):
        load_segmenter(str(tmp_path / "model_int8.onnx"))


def test_each_input_of_an_onnx_export_makes_a_fresh_one(model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    exports = []

    def export() -> set:
        load_segmenter(str(model_dir), onnx_cache=cache)
        exports.append({p.name for p in cache.iterdir()})
        return exports[-1]

    first = export()
    assert export() == first  # nothing changed: reused
    config = json.loads((model_dir / "config.json").read_text())
    config["min_lesion_area"] = config.get("min_lesion_area", 0) + 50  # a config-only change
    (model_dir / "config.json").write_text(json.dumps(config))
    assert len(export()) == 2
    torch.manual_seed(5)
    other = NeoPolypUNet(**{k: v for k, v in config.items() if k in ("input_size", "min_lesion_area")})
    other.save_pretrained(model_dir)  # new weights
    assert len(export()) == 3
    monkeypatch.setattr(torch, "__version__", "0.0.0-another-exporter")
    assert len(export()) == 4
    # onnx, onnxruntime and this package:
    monkeypatch.setattr(loading, "installed_version", lambda package="neopolyp-hf": "another " + package)
    assert len(export()) == 5
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_the_cache_folder_falls_back_when_home_cannot_be_written(tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.delenv("NEOPOLYP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked / "cache"))  # cannot be made: a file stands in the way
    with pytest.warns(UserWarning, match="cannot be written.*NEOPOLYP_CACHE"):
        folder = cache_root()
    assert folder.is_dir() and blocked not in folder.parents
    monkeypatch.setenv("NEOPOLYP_CACHE", str(blocked / "cache"))
    with pytest.raises(OSError, match="NEOPOLYP_CACHE=.*cannot be written"):
        cache_root()


def test_the_temporary_cache_folder_of_another_user_is_not_trusted(tmp_path, monkeypatch):
    import os
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("making a folder owned by another user needs root")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.delenv("NEOPOLYP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked / "cache"))
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    planted = tmp_path / f"neopolyp-cache-{os.getuid()}"
    planted.mkdir(mode=0o777)
    os.chown(planted, 12345, 12345)  # made by another local user, open to all
    with pytest.raises(OSError, match="is not this user's own private folder"):
        cache_root()
    os.chown(planted, os.getuid(), os.getgid())
    with pytest.warns(UserWarning):
        assert cache_root() == planted
    assert planted.stat().st_mode & 0o077 == 0


def test_saved_weights_are_readable_like_any_other_output(random_model, tmp_path):
    """safetensors writes owner-only (0600): a model folder shared with colleagues was unreadable to them."""
    random_model.save_pretrained(tmp_path / "m")
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] and modes["model.safetensors"] & 0o044 == 0o044


def test_an_unreachable_hub_is_not_retried_for_a_minute(monkeypatch):
    """Without HF_HUB_OFFLINE and with no Hub answering, loading a repo id used to retry for 54 s before
    its error: one short probe now sends it straight to the cache, and the error says why."""
    import huggingface_hub
    from huggingface_hub import constants as hub_constants

    from neopolyp_hf import source
    from neopolyp_hf.serving.loopback import free_port

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    calls = []
    real = huggingface_hub.hf_hub_download

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(source, "hf_hub_download", spy)
    assert not source.hub_reachable()
    with pytest.raises(
        ModelSourceError, match=r"'nobody/model'.* not in the cache: the Hub at http://127.0.0.1:\d+ cannot"
    ):
        source.resolve_model_source("nobody/model")
    assert calls and all(call["local_files_only"] for call in calls)
