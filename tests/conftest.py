"""Shared fixtures. The environment is set before any test module imports the libraries."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")
# ONNX exports cached by the serving loader go to a folder of this run, not the user's cache.
os.environ["NEOPOLYP_CACHE"] = tempfile.mkdtemp(prefix="neopolyp-test-cache-")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Fixtures that train a model, serve one or encode video: a test that uses one is slow whether or not it says
# so, and `pytest -m "not slow"` (make test-fast) leaves it out. Tests that do such work themselves are marked.
SLOW_FIXTURES = {"trained_model_dir", "served", "client", "small_clip", "pushed", "hub", "hub_env", "real_model_dir"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


REAL_DATA = Path(os.environ.get("NEOPOLYP_DATA", ROOT.parent / "shared" / "data" / "bkai-igh-neopolyp"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared competition subset; tests that need it skip, saying why, where it is absent."""
    if not (REAL_DATA / "train" / "train").is_dir():
        pytest.skip(f"real BKAI-IGH data not found at {REAL_DATA} (set NEOPOLYP_DATA to the competition folder)")
    return REAL_DATA


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """48 synthetic pairs in the competition layout, made once per session."""
    from neopolyp_hf.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synthetic"), count=48, seed=0)


@pytest.fixture(scope="session")
def random_model():
    """An untrained model at a small input size, in eval mode."""
    import torch

    from neopolyp_hf import NeoPolypUNet

    torch.manual_seed(0)
    return NeoPolypUNet(input_size=64).eval()


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, synthetic_data) -> Path:
    """A two-stage model (segmenter and lesion classifier) trained briefly on synthetic data with
    train/train.py (best/ folder): the app, ONNX and video tests all run the full model."""
    from helpers import load_script

    train_script = load_script("train")

    out = tmp_path_factory.mktemp("trained")
    args = train_script.get_args_parser().parse_args(
        [
            "--data-dir",
            str(synthetic_data),
            "--output-dir",
            str(out),
            "--epochs",
            "5",
            "--image-size",
            "64",
            "--encoder-weights",
            "none",
            "--num-workers",
            "0",
            "--num-overlays",
            "2",
            "--seed",
            "0",
            "--recipe",
            "neopolyp-2stage",
            "--recipe-override",
            "classifier_epochs=3",
        ]
    )
    train_script.main(args)
    return out


@pytest.fixture(scope="session")
def clip_scenes(synthetic_data):
    """Two synthetic (frame, true mask) scenes for test clips."""
    from neopolyp_hf.training.data import find_pairs, load_pair

    return [load_pair(sample) for sample in find_pairs(synthetic_data)[:2]]


@pytest.fixture(scope="session")
def small_clip(tmp_path_factory, clip_scenes) -> Path:
    """A 16-frame H.264 clip at 160x120 (two scenes of a moving camera, one cut), made once."""
    from neopolyp_hf.training.clips import clip_frames, write_clip

    frames = [frame for _, frame, _ in clip_frames(clip_scenes, 8, (160, 120))]
    return write_clip(tmp_path_factory.mktemp("clips") / "small.mp4", frames, fps=8.0)
