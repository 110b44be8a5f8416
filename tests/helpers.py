"""Helpers shared by the tests: the app launched on loopback, the CLI scripts as modules, odd files."""

from __future__ import annotations

import importlib.util
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from types import ModuleType

from neopolyp_hf import loopback
from neopolyp_hf.loopback import stop_app  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The first Chromium on the PATH (the browser tests drive it through playwright), or None."""
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def load_script(name: str, folder: str = "train") -> ModuleType:
    """<folder>/<name>.py (train/ by default) as a module, loaded by file path, to call its
    functions in the test's process."""
    spec = importlib.util.spec_from_file_location(f"neopolyp_{folder}_{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_app(env_extra: dict[str, str], timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """Launch app.py on a free loopback port and wait until it answers."""
    return loopback.start_app(ROOT / "app.py", env_extra, timeout)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
