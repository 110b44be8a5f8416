"""The one cache of derived files (ONNX exports): where it lives and how its entries are keyed.

An entry's key is the SHA-256 of everything it was made from, so a change of any input makes a fresh
entry and a stale one is never read back. Callers write entries atomically: a second process, or a run
killed mid-write, never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import warnings
from pathlib import Path

CACHE_VARIABLE = "NEOPOLYP_CACHE"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def _private(folder: Path) -> bool:
    """Whether a folder in the shared temporary directory is this user's alone: made here with mode 0700 where it
    is missing; else owned by this user, no link, and closed to others (a folder another local user made, or
    opened, could swap the cached ONNX graphs that later runs load)."""
    if not hasattr(os, "getuid"):
        return True
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return False
    if info.st_mode & 0o077:  # our own, made opener by an older release or a umask: closed now
        os.chmod(folder, 0o700)
    return True


def cache_root() -> Path:
    """The cache folder: $NEOPOLYP_CACHE, else the platform's ($XDG_CACHE_HOME or ~/.cache)/neopolyp, else (a
    read-only home, a container run as another user) a folder in the temporary directory, with a warning.

    Raises:
        OSError: $NEOPOLYP_CACHE is set but cannot be written (the message names the variable).
    """
    chosen = os.environ.get(CACHE_VARIABLE)
    if chosen:
        if not _writable(Path(chosen)):
            raise OSError(f"the cache folder {CACHE_VARIABLE}='{chosen}' cannot be written: set it to a writable one")
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base) / "neopolyp"
    if _writable(folder):
        return folder
    fallback = Path(tempfile.gettempdir()) / f"neopolyp-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    if not _private(fallback):
        raise OSError(
            f"'{folder}' cannot be written, and the temporary cache folder '{fallback}' is not this user's own private "
            f"folder (another user may have made it): set {CACHE_VARIABLE} to a writable folder"
        )
    if not _writable(fallback):
        raise OSError(f"no writable cache folder ('{folder}', '{fallback}'): set {CACHE_VARIABLE} to a writable folder")
    warnings.warn(
        f"'{folder}' cannot be written (a read-only home?): caching in '{fallback}' instead; set {CACHE_VARIABLE} "
        "to keep the cache elsewhere",
        stacklevel=2,
    )
    return fallback


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(parts: dict[str, object]) -> str:
    """The key of an entry: SHA-256 of its named inputs (plain JSON values), in name order."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:32]


def cache_path(kind: str, parts: dict[str, object], suffix: str, folder: Path | None = None) -> Path:
    """Where the entry of `kind` made from `parts` lives: `folder` (else the cache's `kind/` folder), named by
    `cache_key(parts)`. The caller makes it there atomically where it is missing."""
    return (folder or cache_root() / kind) / f"{cache_key(parts)}{suffix}"
