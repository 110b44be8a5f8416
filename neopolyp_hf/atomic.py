"""Atomic file writes: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def prepare_output(path: str | os.PathLike) -> Path:
    """Make ready to write a file at `path` before any work: its missing parent folders are created.

    Raises:
        OSError: `path` is a folder, or a parent cannot be created (a file stands in the way, no
            permission); the message names the path.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output '{path}' is a folder: give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"cannot create the folder of output '{path}': {error.strerror or error}") from error
    return path


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, then rename the result over `path` (its missing parent folders created);
    a failure leaves `path` untouched."""
    path = prepare_output(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def replace_dir_atomic(tmp_dir: Path, final_dir: Path) -> None:
    """Swap a fully written folder into place; the old one is removed only after the swap."""
    old = final_dir.with_name(final_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)
