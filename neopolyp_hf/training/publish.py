"""Publishing a trained model to the Hub: the weights, config and card, with its ONNX and INT8 exports
beside them (their SHA-256 in the card), so that every backend of the Space works on a pushed model."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi

from ..errors import DataError, ModelSourceError
from ..model import NeoPolypUNet
from ..onnx.backend import INT8_FILE, ONNX_FILE, classifier_graph_path, export_onnx, quantize_onnx
from ..preprocessing import ImageInput
from .evaluation import calibration_figures


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_exports(model: NeoPolypUNet, folder: Path, calibration_images: Sequence[ImageInput]) -> dict[str, str]:
    """model.onnx and the INT8 model_int8.onnx (calibrated on `calibration_images`), each with its
    second-stage graph where the model has one, in `folder`: returns file name -> SHA-256."""
    fp32 = export_onnx(model, folder / ONNX_FILE)
    int8 = quantize_onnx(fp32, folder / INT8_FILE, calibration_images)
    files = [fp32, int8]
    if model.config.get("lesion_classifier"):
        files += [classifier_graph_path(fp32), classifier_graph_path(int8)]
    return {path.name: sha256(path) for path in files}


def publish(
    model_dir: str | Path,
    repo_id: str,
    calibration_images: Sequence[ImageInput],
    *,
    card_kwargs: dict | None = None,
    private: bool | None = None,
    commit_message: str = "NeoPolyp model",
    token: str | None = None,
) -> str:
    """Push a saved model folder (best/) with its ONNX and INT8 exports to `repo_id`; returns the commit URL."""
    model = NeoPolypUNet.from_pretrained(model_dir)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        folder = Path(workdir)
        exports = write_exports(model, folder, calibration_images)
        kwargs = {**(card_kwargs or {}), "repo_id": repo_id, "exports": exports}
        model.save_pretrained(folder, model_card_kwargs=kwargs)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))


def publish_run(
    run_dir: str | Path, samples: Sequence, repo_id: str, *, private: bool = False, token: str | None = None
) -> str:
    """Publish a train.py run's best/ with its exports (INT8 calibrated on up to 16 held-out frames) and
    the calibration figures measured on its held-out split (OUT/split.json's "val" among `samples`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "best" / "config.json").is_file():
        raise ModelSourceError(f"'{run_dir}' holds no finished run: there is no best/config.json")
    val_ids = set(json.loads((run_dir / "split.json").read_text())["val"])
    held_out = [s for s in samples if s.id in val_ids]
    if not held_out:
        raise DataError(f"none of the held-out images of '{run_dir}' (split.json) are in the data given")
    kwargs = json.loads((run_dir / "best" / "card_kwargs.json").read_text())
    kwargs["calibration"] = calibration_figures(NeoPolypUNet.from_pretrained(run_dir / "best"), held_out)
    step = max(1, len(held_out) // 16)
    frames = [s.image_path for s in held_out[::step][:16]]
    return publish(
        run_dir / "best",
        repo_id,
        frames,
        card_kwargs=kwargs,
        private=private or None,
        token=token,
        commit_message=f"NeoPolyp: {kwargs.get('dataset')} run, with ONNX and INT8 exports",
    )
