"""Atomic file writes: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
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
    a failure (a full disk, a signal, an exception in `write`) leaves `path` untouched and no temporary file.

    Raises:
        OSError: with the same errno, its message naming `path` ("no space left on device while writing ...").
    """
    path = prepare_output(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise OSError(error.errno, f"{describe_os_error(error)} while writing '{path}'") from error
    finally:
        # A file system that turned read-only lets nothing be removed: the write's error is the one to report.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def describe_os_error(error: OSError) -> str:
    """An OSError in words, lower case: 'no space left on device', 'read-only file system', ..."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device"
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


def exit_on_sigterm() -> None:
    """Make SIGTERM (`kill`, `timeout`, `docker stop`) and SIGHUP (a closed terminal or SSH session) end the
    program as Ctrl-C does: they raise SystemExit(128 + the signal's number) in the main thread, so every
    `finally` and cleanup runs and no half-written output stays behind."""
    if threading.current_thread() is threading.main_thread():

        def stop(signum, frame) -> None:
            raise SystemExit(128 + signum)

        for name in ("SIGTERM", "SIGHUP"):
            if hasattr(signal, name):  # SIGHUP does not exist on Windows
                signal.signal(getattr(signal, name), stop)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def replace_dir_atomic(tmp_dir: Path, final_dir: Path) -> None:
    """Swap a fully written folder into place: `final_dir` is renamed to `<final_dir>.old`, `tmp_dir` to
    `final_dir`, then the old one is removed. A kill between the two renames leaves only `.old`:
    `recover_dir` (called here first, and by every reader that resumes) puts it back."""
    recover_dir(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final_dir: Path) -> Path:
    """Finish or undo a `replace_dir_atomic` that was interrupted: where `final_dir` is missing and
    `<final_dir>.old` exists (killed between the renames), the old folder is renamed back; where both
    exist (killed before the old one was removed), the old one is removed. Returns `final_dir`."""
    final_dir = Path(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    if old.exists():
        if final_dir.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final_dir)
    return final_dir
