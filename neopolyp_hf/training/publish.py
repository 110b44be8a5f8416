"""Publishing a trained model to the Hub: the weights, config and card, with its ONNX and INT8 exports
beside them (their SHA-256 in the card), so that every backend of the Space works on a pushed model."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

from ..atomic import replace_dir_atomic
from ..errors import DataError, HubError, ModelSourceError
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


def check_hub(repo_id: str, token: str | None = None) -> HfApi:
    """Before any work: the Hub answers and the token is accepted (`whoami`); returns the client.

    Raises:
        HubError: in one line, naming the repo and what is wrong (offline mode, no token, a refused token,
            no connection).
    """
    if hub_constants.HF_HUB_OFFLINE:
        raise HubError(
            f"cannot push to '{repo_id}': HF_HUB_OFFLINE is set; unset it, or write the bundle with --output-dir"
        )
    api = HfApi(token=token)
    try:
        api.whoami()
    except LocalTokenNotFoundError:
        raise HubError(f"cannot push to '{repo_id}': no Hub token; run `hf auth login` or set HF_TOKEN") from None
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        raise HubError(f"cannot push to '{repo_id}': the Hub refused the token (HTTP {status})") from None
    except Exception as error:  # no route, DNS, a timeout: the HTTP client's own connection errors
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HubError(
            f"cannot push to '{repo_id}': the Hub at {hub_constants.ENDPOINT} cannot be reached ({reason})"
        ) from None
    return api


def write_bundle(
    model_dir: str | Path,
    folder: str | Path,
    calibration_images: Sequence[ImageInput],
    card_kwargs: dict | None = None,
) -> Path:
    """The publishable bundle of a saved model folder (best/) in `folder`: weights, config, the card and the
    ONNX and INT8 exports with their SHA-256 in the card. Written beside and swapped in, so `folder` is
    never half-made; an existing bundle there is replaced whole."""
    model = NeoPolypUNet.from_pretrained(model_dir)
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        exports = write_exports(model, tmp, calibration_images)
        model.save_pretrained(tmp, model_card_kwargs={**(card_kwargs or {}), "exports": exports})
        replace_dir_atomic(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def publish(
    model_dir: str | Path,
    repo_id: str,
    calibration_images: Sequence[ImageInput],
    *,
    card_kwargs: dict | None = None,
    private: bool | None = None,
    commit_message: str = "NeoPolyp model",
    token: str | None = None,
    output_dir: str | Path | None = None,
) -> str:
    """Push a saved model folder (best/) with its exports to `repo_id` (the bundle is written to `output_dir`,
    else to a temporary folder, then uploaded); returns the commit URL."""
    api = check_hub(repo_id, token)
    with tempfile.TemporaryDirectory() as workdir:
        folder = Path(output_dir) if output_dir else Path(workdir) / "bundle"
        write_bundle(model_dir, folder, calibration_images, {**(card_kwargs or {}), "repo_id": repo_id})
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))


def publish_run(
    run_dir: str | Path,
    samples: Sequence,
    repo_id: str | None = None,
    *,
    private: bool = False,
    token: str | None = None,
    output_dir: str | Path | None = None,
) -> str:
    """Publish a train.py run's best/ with its exports (INT8 calibrated on up to 16 held-out frames) and the
    calibration figures measured on its held-out split (OUT/split.json's "val" among `samples`): to
    `repo_id` (the Hub is checked first, before any work), to the local folder `output_dir`, or both.
    Returns the commit URL, or the bundle's folder where nothing is pushed."""
    if repo_id is None and output_dir is None:
        raise ValueError("give a repo_id to push to, an output_dir to write the bundle to, or both")
    if repo_id is not None:
        check_hub(repo_id, token)
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
    if repo_id is None:
        return str(write_bundle(run_dir / "best", output_dir, frames, kwargs))
    return publish(
        run_dir / "best",
        repo_id,
        frames,
        card_kwargs=kwargs,
        private=private or None,
        token=token,
        commit_message=f"NeoPolyp: {kwargs.get('dataset')} run, with ONNX and INT8 exports",
        output_dir=output_dir,
    )
