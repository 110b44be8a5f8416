"""Helpers shared by the tests: the app launched on loopback, the CLI scripts as modules, odd files."""

from __future__ import annotations

import importlib.util
import shutil
import struct
import subprocess
import zlib
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import numpy as np

from neopolyp_hf.serving import loopback
from neopolyp_hf.serving.loopback import stop_app  # noqa: F401  (re-exported for the tests)

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


def marked_frame(width: int, height: int) -> np.ndarray:
    """A grey frame with a white square in its top-left corner, to see where the viewer puts that corner."""
    rgb = np.full((height, width, 3), 90, np.uint8)
    rgb[: height // 4, : width // 4] = 255
    return rgb


def corner(rgb: np.ndarray) -> str:
    """Which corner of a frame holds the white mark."""
    h, w = rgb.shape[0] // 8, rgb.shape[1] // 8
    corners = {
        "top-left": rgb[:h, :w],
        "top-right": rgb[:h, -w:],
        "bottom-left": rgb[-h:, :w],
        "bottom-right": rgb[-h:, -w:],
    }
    return max(corners, key=lambda k: corners[k].mean())


def encode(path: Path, frames, fps: int = 15, codec: str = "libx264", pix_fmt: str = "yuv420p", **setup) -> Path:
    """Encode RGB frames with PyAV as recorders write them: `setup` may give a display `rotation`
    (degrees counter-clockwise), a sample `aspect` ratio, a first timestamp `start_s` and a `format`."""
    import av

    container = av.open(str(path), "w", **({"format": setup["format"]} if "format" in setup else {}))
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = pix_fmt
    if "rotation" in setup:
        stream.set_display_rotation(setup["rotation"])
    if "aspect" in setup:
        stream.codec_context.sample_aspect_ratio = setup["aspect"]
    first = setup.get("start_s", 0.0)
    for index, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
        if first:
            frame.time_base = Fraction(1, fps)
            frame.pts = round(first * fps) + index
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def cover_art_memo(path: Path) -> Path:
    """An MP3 voice memo with embedded cover art (an attached picture stream), as phones write them."""
    import av

    container = av.open(str(path), "w", format="mp3")
    audio = container.add_stream("libmp3lame", rate=22050, layout="mono")
    cover = container.add_stream("mjpeg")
    cover.width = cover.height = 64
    cover.pix_fmt = "yuvj420p"
    cover.disposition = av.stream.Disposition.attached_pic
    picture = av.VideoFrame.from_ndarray(marked_frame(64, 64), format="rgb24").reformat(format="yuvj420p")
    for packet in [*cover.encode(picture), *cover.encode()]:
        container.mux(packet)
    for index in range(20):
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.float32), format="fltp", layout="mono")
        samples.sample_rate, samples.pts = 22050, index * 1152
        for packet in audio.encode(samples):
            container.mux(packet)
    for packet in audio.encode():
        container.mux(packet)
    container.close()
    return path
