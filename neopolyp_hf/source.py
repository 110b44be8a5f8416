"""The one place that resolves a model source: a local folder, or a Hub repo at a revision.

It fetches the config, the safetensors weights and the card, reports the commit they came from
(from huggingface_hub's own answer, never from the cache's path layout), refuses pickles, and
turns the Hub's errors into one `ModelSourceError` that names the source.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

from .errors import ModelSourceError

CONFIG_FILE = hub_constants.CONFIG_NAME
WEIGHTS_FILE = hub_constants.SAFETENSORS_SINGLE_FILE
CARD_FILE = "README.md"
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")


@dataclass(frozen=True)
class ModelFiles:
    """A resolved model source: where its files are and which commit they came from."""

    source: str
    revision: str | None  # what was asked for (None: the default branch)
    commit: str | None  # the Hub commit the files came from; None for a local folder
    config: Path
    weights: Path
    card: Path | None  # the model card, where there is one

    @property
    def is_local(self) -> bool:
        """True for a model folder on disk."""
        return self.commit is None

    def describe_revision(self) -> str:
        """'local folder', or the revision asked for with the commit it resolved to."""
        if self.is_local:
            return "local folder"
        return f"{self.revision or 'main'} ({self.commit[:10]})"


def resolve_model_source(source: str | os.PathLike, revision: str | None = None, **hub_args: Any) -> ModelFiles:
    """Find a model's config, weights and card in a folder or a Hub repo; errors name the source.

    `hub_args` go to `hf_hub_download` (cache_dir, force_download, local_files_only, token).
    """
    name = str(source)
    if not name:
        raise ModelSourceError("no model source given: name a model folder or a Hub repo id")
    if os.path.isdir(name):
        return _resolve_folder(Path(name))
    if not hub_constants.HF_HUB_OFFLINE and not hub_args.get("local_files_only") and not hub_reachable():
        # No answer from the Hub: its client would retry for about a minute before the same error.
        # The cache alone answers at once (an earlier download still loads); the error then says why.
        hub_args = {**hub_args, "local_files_only": True}
    # Downloading by the revision asked for records it in the cache (refs/), so an offline restart
    # finds it; the Hub's answer then names the commit, and all three files come from that one
    # commit, so a push between two downloads cannot mix versions.
    _download(name, CONFIG_FILE, revision, hub_args)
    commit = _download(name, CONFIG_FILE, revision, hub_args, dry_run=True).commit_hash
    config = Path(_download(name, CONFIG_FILE, commit, hub_args, revision_asked=revision))
    weights = Path(_download(name, WEIGHTS_FILE, commit, hub_args, revision_asked=revision))
    try:
        card = Path(_download(name, CARD_FILE, commit, hub_args, revision_asked=revision))
    except ModelSourceError:  # a card is optional
        card = None
    return ModelFiles(name, revision, commit, check_model_file(config), check_model_file(weights), card)


LFS_POINTER = b"version https://git-lfs.github.com/spec/"
# How to get the real file back, by where it came from.
REFETCH = "run `git lfs pull` in the model folder (or download the file again)"


def check_model_file(path: str | os.PathLike) -> Path:
    """Check a model file before it is read: not a Git LFS pointer, and for safetensors, a whole file
    (its header's tensors all inside it). Returns the path.

    Raises:
        ModelSourceError: naming the file, what it is (an LFS pointer to N bytes; N of M bytes), and the fix.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(1024)
    if head.startswith(LFS_POINTER):
        match = re.search(rb"^size (\d+)$", head, re.MULTILINE)
        target = f" to a file of {int(match.group(1)):,} bytes" if match else ""
        raise ModelSourceError(
            f"'{path}' is a Git LFS pointer ({size} bytes){target}, not the file itself: the model was cloned "
            f"without git-lfs; {REFETCH}"
        )
    if path.suffix == ".safetensors":
        _check_safetensors(path, size, head)
    return path


def _check_safetensors(path: Path, size: int, head: bytes) -> None:
    """The safetensors layout: an 8-byte little-endian header length, a JSON header, then the tensors."""
    if size < 8:
        raise ModelSourceError(f"'{path}' is cut short: {size} bytes, not even a safetensors header; {REFETCH}")
    (header_length,) = struct.unpack("<Q", head[:8])
    if 8 + header_length > size:
        raise ModelSourceError(
            f"'{path}' is cut short or not a safetensors file: {size:,} bytes, but its header alone claims "
            f"{8 + header_length:,}; {REFETCH}"
        )
    with open(path, "rb") as handle:
        handle.seek(8)
        try:
            header = json.loads(handle.read(header_length))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise ModelSourceError(
                f"'{path}' is not a safetensors file (its header is unreadable); {REFETCH}"
            ) from error
    expected = 8 + header_length + end
    if size < expected:
        raise ModelSourceError(f"'{path}' is cut short: {size:,} of {expected:,} bytes; {REFETCH}")


def fetch_model_file(files: ModelFiles, filename: str) -> Path:
    """Another file of a resolved model (an INT8 export, say), from the same folder or Hub commit."""
    if files.is_local:
        path = files.config.parent / filename
        if not path.is_file():
            raise ModelSourceError(f"model folder '{files.source}' has no {filename}")
        return check_model_file(path)
    return check_model_file(_download(files.source, filename, files.commit, {}, revision_asked=files.revision))


def _resolve_folder(folder: Path) -> ModelFiles:
    if not (folder / CONFIG_FILE).is_file():
        raise ModelSourceError(f"model folder '{folder}' has no {CONFIG_FILE}")
    if not (folder / WEIGHTS_FILE).is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ModelSourceError(
                f"model folder '{folder}' holds only pickle weights {pickles}; NeoPolyp loads "
                f"{WEIGHTS_FILE} only and never unpickles files"
            )
        raise ModelSourceError(f"model folder '{folder}' has no {WEIGHTS_FILE}")
    card = folder / CARD_FILE
    config, weights = check_model_file(folder / CONFIG_FILE), check_model_file(folder / WEIGHTS_FILE)
    return ModelFiles(str(folder), None, None, config, weights, card if card.is_file() else None)


HUB_PROBE_SECONDS = 3.0


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether the Hub's host (HF_ENDPOINT) accepts a TCP connection within `timeout` seconds."""
    url = urlparse(hub_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _download(
    repo_id: str,
    filename: str,
    revision: str | None,
    hub_args: dict[str, Any],
    dry_run: bool = False,
    revision_asked: str | None = None,
):
    """One file of a Hub repo (or with `dry_run`, what the Hub says about it), errors translated."""
    shown = revision_asked or revision or "main"
    try:
        return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision, dry_run=dry_run, **hub_args)
    except LocalEntryNotFoundError as error:
        why = (
            "HF_HUB_OFFLINE is set"
            if hub_constants.HF_HUB_OFFLINE
            else f"the Hub at {hub_constants.ENDPOINT} cannot be reached"
        )
        raise ModelSourceError(
            f"'{repo_id}' is not a local folder, and {filename} of Hub repo '{repo_id}' (revision {shown}) "
            f"is not in the cache: {why}"
        ) from error
    except (EntryNotFoundError, HfHubHTTPError) as error:
        if filename == WEIGHTS_FILE:
            pickles = _pickle_files_in_repo(repo_id, revision, hub_args.get("token"))
            if pickles:
                raise ModelSourceError(
                    f"Hub repo '{repo_id}' (revision {shown}) holds only pickle weights {pickles}; NeoPolyp "
                    f"loads {filename} only and never unpickles files"
                ) from error
        if isinstance(error, EntryNotFoundError):
            raise ModelSourceError(f"Hub repo '{repo_id}' (revision {shown}) has no {filename}") from error
        raise ModelSourceError(
            f"cannot load Hub repo '{repo_id}' (revision {shown}): {type(error).__name__}: {str(error).splitlines()[0]}"
        ) from error
    except ValueError as error:  # HFValidationError: not a valid repo id nor an existing folder
        raise ModelSourceError(f"'{repo_id}' is neither a model folder nor a valid Hub repo id: {error}") from error


def _pickle_files_in_repo(repo_id: str, revision: str | None, token: str | bool | None) -> list[str]:
    """Names of pickle checkpoints in a Hub repo (listing only: nothing is downloaded)."""
    try:
        files = HfApi(token=token).list_repo_files(repo_id, revision=revision)
    except Exception:  # the listing is only for a better message
        return []
    return sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
