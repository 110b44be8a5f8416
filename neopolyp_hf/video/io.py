"""Reading and writing video with PyAV (FFmpeg): frames in as RGB arrays, H.264 MP4 out, written atomically."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..atomic import prepare_output
from ..errors import VideoLoadError
from ..preprocessing import DEFAULT_MAX_PIXELS

DEFAULT_MAX_SECONDS = 60.0
# x264 presets trade encoding time for file size at the same quality. On 2 cores at 960x736,
# "ultrafast" takes about 9 ms a frame, "veryfast" 19 and "medium" 43, against ~60 ms for the model
# at 256 px INT8: anything slower than ultrafast would take a large share of the frame budget.
DEFAULT_PRESET = "ultrafast"


def _av():
    try:
        import av
    except ImportError as error:  # the video extra is optional
        raise ImportError(
            "video needs PyAV: in a checkout of NeoPolyp, pip install '.[video]' "
            "(or pip install av==18.1.0 scipy==1.17.1)"
        ) from error
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream."""

    width: int
    height: int
    fps: float
    duration_s: float | None  # None where the container does not say
    codec: str


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index, its time in seconds and its pixels (HxWx3 uint8 RGB)."""

    index: int
    time: float
    rgb: np.ndarray


def _open(path: str | os.PathLike):
    av = _av()
    name = Path(path).name
    if not Path(path).is_file():
        raise VideoLoadError(f"video '{name}' does not exist")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoLoadError(f"'{name}' is not a readable video: {error}") from error
    if not container.streams.video:
        container.close()
        raise VideoLoadError(f"'{name}' has no video stream: no frames to segment")
    return container


def probe_video(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, max_seconds: float | None = DEFAULT_MAX_SECONDS
) -> VideoInfo:
    """The video's size, rate and length, checked against the limits before any frame is decoded."""
    name = Path(path).name
    container = _open(path)
    try:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 25.0
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        codec = stream.codec_context.name
    finally:
        container.close()
    if not width or not height:
        raise VideoLoadError(f"'{name}' has a video stream without a frame size (corrupt or truncated)")
    if width * height > max_pixels:
        raise VideoLoadError(f"'{name}' has {width}x{height} frames, over the limit of {max_pixels:,} pixels")
    if max_seconds is not None and duration is not None and duration > max_seconds:
        raise VideoLoadError(f"'{name}' lasts {duration:.1f} s, over the limit of {max_seconds:g} s")
    return VideoInfo(width, height, fps, duration, codec)


def read_frames(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, max_seconds: float | None = DEFAULT_MAX_SECONDS
) -> Iterator[Frame]:
    """Decode the first video stream frame by frame (audio is ignored); errors name the file and frame."""
    av = _av()
    name = Path(path).name
    info = probe_video(path, max_pixels, max_seconds)
    container = _open(path)
    count = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg decodes in its own threads, outside the GIL
        try:
            for frame in container.decode(stream):
                time = float(frame.time) if frame.time is not None else count / info.fps
                if max_seconds is not None and time > max_seconds:
                    raise VideoLoadError(f"'{name}' runs past the limit of {max_seconds:g} s")
                if frame.width * frame.height > max_pixels:
                    raise VideoLoadError(
                        f"'{name}' has a {frame.width}x{frame.height} frame, over the limit of {max_pixels:,} pixels"
                    )
                yield Frame(count, time, frame.to_ndarray(format="rgb24"))
                count += 1
        except av.FFmpegError as error:
            raise VideoLoadError(f"'{name}' is corrupt or truncated (after {count} frames): {error}") from error
    finally:
        container.close()
    if count == 0:
        raise VideoLoadError(f"'{name}' has no decodable frames")


def prefetch(frames: Iterator, size: int = 4) -> Iterator:
    """Run an iterator in a thread, `size` items ahead (decoding overlaps the model); errors are re-raised here."""
    items: queue.Queue = queue.Queue(maxsize=size)
    done, stop = object(), threading.Event()

    def work() -> None:
        try:
            for item in frames:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as error:  # handed to the consumer
            items.put(error)

    thread = threading.Thread(target=work, name="neopolyp-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class VideoWriter:
    """H.264 (yuv420p) MP4 that browsers play, encoded in a thread of its own and written atomically:
    the file appears at `path` only when `close()` succeeds. Odd frame sizes lose their last row or column."""

    def __init__(self, path: str | os.PathLike, fps: float, preset: str = DEFAULT_PRESET, crf: int = 23) -> None:
        self.path = prepare_output(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        self.fps, self.preset, self.crf = fps, preset, crf
        self.frames = 0
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._container = self._stream = None
        self._thread = threading.Thread(target=self._encode, name="neopolyp-encode", daemon=True)
        self._thread.start()

    def _setup(self, width: int, height: int) -> None:
        av = _av()
        self._container = av.open(str(self.tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": self.preset, "crf": str(self.crf)}
        self._stream = stream

    def _encode(self) -> None:
        av = _av()
        while True:
            rgb = self._queue.get()
            if rgb is None:
                return
            if self._error is not None:
                continue  # drain: the error is raised by write() or close()
            try:
                height, width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
                if self._stream is None:
                    self._setup(width, height)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:height, :width]), format="rgb24")
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
            except BaseException as error:
                self._error = error

    def write(self, rgb: np.ndarray) -> None:
        """Queue one HxWx3 uint8 RGB frame (blocks while the encoder is 8 frames behind)."""
        if self._error is not None:
            raise self._error
        self._queue.put(rgb)
        self.frames += 1

    def close(self) -> Path:
        """Flush the encoder and move the finished file into place."""
        self._queue.put(None)
        self._thread.join()
        try:
            if self._error is not None:
                raise self._error
            if self._stream is None:
                raise VideoLoadError("no frame was written: there is no video to save")
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
            os.replace(self.tmp, self.path)
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Drop whatever was written; `path` is left as it was."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._container is not None:
            with contextlib.suppress(Exception):  # already failing: the partial file is removed below
                self._container.close()
            self._container = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
