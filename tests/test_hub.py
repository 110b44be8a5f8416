"""The Hub loop end to end -- train --push, from_pretrained by repo id, the Space pulling by repo id --
against a local Hub (olah plus the write front in tests/hub_server.py), all with the real huggingface_hub.

huggingface_hub reads HF_ENDPOINT when it is imported, so every client here runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, start_app, stop_app
from hub_server import TOKEN, LocalHub, commit_files, create_repo

from neopolyp_hf import NeoPolypUNet
from neopolyp_hf.serving.loopback import free_port

REPO = "test-org/neopolyp"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    local_hub = LocalHub(tmp_path_factory.mktemp("hub")).start()
    yield local_hub
    local_hub.stop()


@pytest.fixture(scope="module")
def hub_env(hub, tmp_path_factory) -> dict[str, str]:
    return {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(tmp_path_factory.mktemp("hf_home")),
    }


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def pushed(hub, hub_env, synthetic_data, tmp_path_factory) -> Path:
    """A real train.py run that pushes its best model to the local Hub."""
    out = tmp_path_factory.mktemp("push_run")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train" / "train.py"),
            "--data-dir",
            str(synthetic_data),
            "--output-dir",
            str(out),
            "--epochs",
            "2",
            "--image-size",
            "64",
            "--encoder-weights",
            "none",
            "--num-workers",
            "0",
            "--num-overlays",
            "0",
            "--push",
            "--repo-id",
            REPO,
        ],
        env=hub_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"pushed to {REPO}" in result.stdout
    return out


def _logits(model: NeoPolypUNet) -> torch.Tensor:
    torch.manual_seed(123)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        return model.eval()(x)


LOGITS_SCRIPT = """
    import sys, torch, numpy as np
    from neopolyp_hf import NeoPolypUNet
    revision = sys.argv[2] if len(sys.argv) > 2 else None
    model = NeoPolypUNet.from_pretrained({repo!r}, revision={revision})
    torch.manual_seed(123)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        np.save({path!r}, model.eval()(x).numpy())
"""


def test_push_publishes_weights_config_and_card(pushed, hub):
    from huggingface_hub import ModelCard

    from neopolyp_hf.training.publish import sha256

    repo = hub.mirrors / "models" / REPO
    files = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True).stdout.split()
    assert sorted(files) == ["README.md", "config.json", "model.onnx", "model.safetensors", "model_int8.onnx"]
    card = ModelCard.load(repo / "README.md")
    for name in ("model.onnx", "model_int8.onnx"):  # the card records each export's hash
        assert f"| {name} | `{sha256(repo / name)}` |" in card.text
    assert f'from_pretrained("{REPO}")' in card.text and 'pip install ".[video]"' in card.text
    assert "/tmp" not in card.text and str(pushed) not in card.text and "data_dir" not in card.text
    best = json.loads((pushed / "last" / "training_state.json").read_text())["best_metrics"]
    results = card.data.to_dict()["model-index"][0]["results"][0]["metrics"]
    assert {m["name"]: m["value"] for m in results}["dice_mean"] == pytest.approx(best["val_dice_mean"])
    assert card.data.to_dict()["datasets"] == ["neopolyp-synthetic"]
    assert "not for clinical decisions" in card.text
    assert json.loads((repo / "config.json").read_text())["encoder_weights"] is None


@pytest.mark.slow
def test_int8_serves_from_the_hub_and_a_run_can_be_pushed_again(pushed, hub, hub_env, synthetic_data):
    result = run_python(
        f"""
        from neopolyp_hf.onnx.loading import load_segmenter
        segmenter, info = load_segmenter({REPO!r}, precision="int8")
        prediction = segmenter.predict({str(sorted((synthetic_data / "train" / "train").glob("*.jpeg"))[0])!r})
        print(info.backend, info.precision, segmenter.precision, prediction.mask.shape)
        """,
        hub_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[:3] == ["onnx", "int8", "int8"]

    again = "neopolyp/pushed-again"
    command = [sys.executable, str(ROOT / "train" / "push.py"), "--run-dir", str(pushed), "--data-dir"]
    result = subprocess.run(
        [*command, str(synthetic_data), "--repo-id", again], env=hub_env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    repo = hub.mirrors / "models" / again
    files = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True).stdout.split()
    assert {"config.json", "model.safetensors", "model_int8.onnx", "README.md"} <= set(files)
    assert (repo / "model.safetensors").read_bytes() == (pushed / "best" / "model.safetensors").read_bytes()
    result = subprocess.run(
        [*command[:3], str(pushed / "nothing"), "--data-dir", str(synthetic_data), "--repo-id", again],
        env=hub_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "holds no finished run" in result.stderr and "Traceback" not in result.stderr


def test_from_pretrained_by_repo_id_gives_identical_logits(pushed, hub_env, tmp_path):
    path = tmp_path / "logits.npy"
    result = run_python(LOGITS_SCRIPT.format(repo=REPO, revision=None, path=str(path)), hub_env)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = _logits(NeoPolypUNet.from_pretrained(pushed / "best"))
    assert torch.equal(torch.from_numpy(np.load(path)), expected)


def test_space_pulls_by_repo_id_and_pins_revisions(pushed, hub, hub_env, tmp_path):
    from gradio_client import Client, handle_file

    first = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=hub.mirrors / "models" / REPO, capture_output=True, text=True
    ).stdout.strip()
    image = tmp_path / "frame.png"
    from PIL import Image

    from neopolyp_hf.synthetic import synthetic_pair

    Image.fromarray(synthetic_pair(np.random.default_rng(5), 120, 160)[0]).save(image)
    expected = NeoPolypUNet.from_pretrained(pushed / "best").optimize_for_inference().predict(image)

    # A second, different model on main; the first stays reachable by its commit.
    result = run_python(
        f"""
        import torch
        from neopolyp_hf import NeoPolypUNet
        torch.manual_seed(99)
        NeoPolypUNet(input_size=64).push_to_hub({REPO!r}, commit_message="a different model")
    """,
        hub_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    process, url = start_app(
        {**hub_env, "NEOPOLYP_MODEL": REPO, "NEOPOLYP_REVISION": first, "NEOPOLYP_BACKEND": "torch"}
    )
    try:
        client = Client(url, verbose=False)
        _, percentages, *_ = client.predict(handle_file(str(image)), api_name="/predict")
        assert percentages["neoplastic"]["percent_of_image"] == round(expected.percentages["neoplastic"], 3)
    finally:
        stop_app(process)

    path_main, path_first = tmp_path / "main.npy", tmp_path / "first.npy"
    for revision, path in ((None, path_main), (repr(first), path_first)):
        result = run_python(LOGITS_SCRIPT.format(repo=REPO, revision=revision, path=str(path)), hub_env)
        assert result.returncode == 0, result.stderr[-3000:]
    best_logits = _logits(NeoPolypUNet.from_pretrained(pushed / "best"))
    assert torch.equal(torch.from_numpy(np.load(path_first)), best_logits)
    assert not torch.equal(torch.from_numpy(np.load(path_main)), best_logits)


def test_missing_repo_and_pickle_only_repo_get_clear_errors(hub, hub_env):
    result = run_python(
        """
        from neopolyp_hf import NeoPolypUNet
        NeoPolypUNet.from_pretrained("test-org/does-not-exist")
    """,
        hub_env,
    )
    assert result.returncode != 0 and "ModelSourceError" in result.stderr
    assert "test-org/does-not-exist" in result.stderr

    repo = create_repo(hub.mirrors, "test-org/pickle-only")
    config = NeoPolypUNet(input_size=64).config
    weights = Path(hub.root) / "pytorch_model.bin"
    torch.save({"unet.weight": torch.zeros(1)}, weights)
    commit_files(
        repo,
        {"config.json": json.dumps(config).encode(), "pytorch_model.bin": weights.read_bytes()},
        [],
        "a pickle checkpoint",
    )
    result = run_python(
        """
        import pickle, torch
        def refuse(*args, **kwargs):
            raise AssertionError("something was unpickled")
        torch.load = pickle.load = pickle.loads = refuse
        from neopolyp_hf import NeoPolypUNet
        NeoPolypUNet.from_pretrained("test-org/pickle-only")
    """,
        hub_env,
    )
    assert result.returncode != 0
    assert "pickle weights ['pytorch_model.bin']" in result.stderr
    assert "something was unpickled" not in result.stderr

    process = subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        env={**hub_env, "NEOPOLYP_MODEL": "test-org/does-not-exist"},
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert process.returncode != 0 and "test-org/does-not-exist" in process.stderr


def test_push_checks_the_hub_and_its_token_before_any_work(hub, hub_env, trained_model_dir, synthetic_data, tmp_path):
    """Offline, without a token or with a refused one, push fails at once in one line naming the repo, and
    writes nothing (it once worked four minutes, then died in a 60-line connection traceback)."""
    bundle = tmp_path / "bundle"
    command = [sys.executable, str(ROOT / "train" / "push.py"), "--run-dir", str(trained_model_dir)]
    command += ["--data-dir", str(synthetic_data), "--repo-id", REPO, "--output-dir", str(bundle)]
    no_token = {k: v for k, v in hub_env.items() if k != "HF_TOKEN"}
    cases = {
        "HF_HUB_OFFLINE is set": {**hub_env, "HF_HUB_OFFLINE": "1"},
        "no Hub token": no_token,
        "the Hub refused the token (HTTP 401)": {**hub_env, "HF_TOKEN": "hf_wrong"},
        "cannot be reached": {**hub_env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
    }
    for reason, env in cases.items():
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert f"cannot push to '{REPO}'" in result.stderr and reason in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not bundle.exists()


def test_the_publishable_bundle_is_written_locally_without_a_hub(trained_model_dir, synthetic_data, tmp_path):
    from huggingface_hub import ModelCard

    from neopolyp_hf.training.publish import sha256

    bundle = tmp_path / "bundle"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train" / "push.py"), "--run-dir", str(trained_model_dir)]
        + ["--data-dir", str(synthetic_data), "--output-dir", str(bundle)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"bundle written to {bundle}" in result.stdout
    files = {p.name for p in bundle.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "model.onnx", "model_int8.onnx"} <= files
    card = ModelCard.load(bundle / "README.md")
    assert sha256(bundle / "model_int8.onnx") in card.text and "| ece_top_class |" in card.text
    assert (bundle / "model.safetensors").read_bytes() == (
        trained_model_dir / "best" / "model.safetensors"
    ).read_bytes()
    assert not list(tmp_path.glob("bundle.*"))  # nothing half-made beside it


def test_space_restarts_offline_from_the_cache(pushed, hub, hub_env, tmp_path):
    """Runs last: stops the Hub, then the Space must start from what it cached earlier."""
    from gradio_client import Client, handle_file

    process, url = start_app({**hub_env, "NEOPOLYP_MODEL": REPO})  # online: fills the cache for main
    try:
        assert Client(url, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    finally:
        stop_app(process)
    hub.stop()
    offline = {**hub_env, "HF_HUB_OFFLINE": "1", "NEOPOLYP_MODEL": REPO}
    process, url = start_app(offline)
    try:
        image = tmp_path / "frame.png"
        from PIL import Image

        Image.new("RGB", (64, 48), (200, 120, 110)).save(image)
        _, percentages, *_ = Client(url, verbose=False).predict(handle_file(str(image)), api_name="/predict")
        assert set(percentages) == {"neoplastic", "non_neoplastic"}
    finally:
        stop_app(process)
