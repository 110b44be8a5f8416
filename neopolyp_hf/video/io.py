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

import cv2
import numpy as np

from ..atomic import prepare_output
from ..errors import VideoLoadError
from ..preprocessing import DEFAULT_MAX_PIXELS
from .hdr import HDR_TRANSFERS, hdr_frame_to_rgb, hdr_transfer

DEFAULT_MAX_SECONDS = 60.0
# x264 presets trade encoding time for file size at the same quality. On 2 cores at 960x736,
# "ultrafast" takes about 9 ms a frame, "veryfast" 19 and "medium" 43, against ~60 ms for the model
# at 256 px INT8: anything slower than ultrafast would take a large share of the frame budget.
DEFAULT_PRESET = "ultrafast"
TIME_BASE = Fraction(1, 90000)  # the written clip's clock: MPEG's 90 kHz


def _av():
    try:
        import av
    except ImportError as error:  # the video extra is optional
        raise ImportError(
            "video needs PyAV: in a checkout of NeoPolyp, pip install '.[video]' "
            "(or pip install av==18.1.0 scipy==1.17.1)"
        ) from error
    return av


# The fastest frame rate endoscopy records: the bound on a clip's length where nothing times its frames.
MAX_FPS = 60
# The smallest frame side taken (px): below it a frame holds no polyp worth segmenting, and the
# H.264 writer (even sizes, yuv420p) has nothing to encode.
MIN_FRAME_SIDE = 16
# Demuxers that read still images: a PNG or JPEG named .mp4 opens as a one-frame "video" through them.
IMAGE_DEMUXERS = ("image2", "image2pipe")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its video stream. The size is the stored (coded) one, widened
    by the sample aspect ratio; frames come out of `read_frames` upright, so a rotated clip's
    frames are `height` x `width` wide."""

    width: int
    height: int
    fps: float | None  # frames per second; None where nothing says
    duration_s: float | None  # None where the container does not say
    codec: str
    hdr: str | None = None  # "HLG" or "PQ": its frames are tone-mapped to SDR (`neopolyp_hf.video.hdr`)
    timing: str = "container"  # where frame times come from (`VideoSource`); "unknown": fps and times are None


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index, its time in seconds from the first frame (None where the source's timing is
    unknown) and its pixels (HxWx3 uint8 RGB)."""

    index: int
    time: float | None
    rgb: np.ndarray


def ffmpeg_path(path: str | os.PathLike) -> str:
    """A path as FFmpeg takes it as a plain file whatever its name holds: an absolute path. FFmpeg
    reads a name such as "2024-05-01T10:32:05.mp4" as the protocol "2024-05-01T10"; a leading "/"
    is never part of a protocol name."""
    return os.path.abspath(os.fspath(path))


def _video_stream(container, name: str):
    """The clip's video stream: the first that is not an attached picture (an MP3's or M4A's cover art)."""
    av = _av()
    if container.format.name in IMAGE_DEMUXERS or container.format.name.endswith("_pipe"):
        raise VideoLoadError(f"'{name}' is a still image ({container.format.name}), not a video")
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        cover = " (only a cover picture)" if container.streams.video else ""
        raise VideoLoadError(f"'{name}' has no video stream{cover}: no frames to segment")
    return streams[0]


def _open(path: str | os.PathLike, name: str):
    av = _av()
    if not Path(path).is_file():
        raise VideoLoadError(f"video '{name}' does not exist")
    try:
        container = av.open(ffmpeg_path(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoLoadError(f"'{name}' is not a readable video: {error}") from error
    try:
        stream = _video_stream(container, name)
    except VideoLoadError:
        container.close()
        raise
    return container, stream


def _widen(width: int, aspect) -> int:
    """The displayed width of `width` stored pixels of sample aspect ratio `aspect` (None or 0: square)."""
    return max(1, round(width * float(aspect))) if aspect and float(aspect) > 0 and aspect != 1 else width


def upright(rgb: np.ndarray, rotation: float, aspect=None) -> np.ndarray:
    """A decoded frame as the viewer sees it: non-square pixels resampled to square (the width
    changes), then turned by the display matrix's `rotation` (degrees counter-clockwise, as
    `av.VideoFrame.rotation` gives it; -90 is a phone held upright)."""
    width = _widen(rgb.shape[1], aspect)
    if width != rgb.shape[1]:
        rgb = cv2.resize(
            rgb, (width, rgb.shape[0]), interpolation=cv2.INTER_AREA if width < rgb.shape[1] else cv2.INTER_LINEAR
        )
    turns = round((rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


class VideoSource:
    """One source of frames behind one interface: what it is (`name`, as the user gave it), how large, how long
    and how it is timed (`info`), and its frames in order (`frames()`, once). Every reader of video (the pipeline,
    the CLIs, the Space, archive mode) asks `neopolyp_hf.video.sources.open_video` for one, once per request.

    `info.timing` says where frame times come from: "container" (the file's own time stamps), "dicom" (the DICOM
    object's Frame Time, Frame Time Vector or Cine Rate), "stream" (a bare stream's own rate), "rate" (a rate
    given by the caller: stills, a camera) or "unknown" (nothing says: frame times are None, never assumed)."""

    name: str
    info: VideoInfo

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the source holds (a temporary stream file); a no-op by default."""

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_limits(name: str, info: VideoInfo, max_pixels: int, max_seconds: float | None, frames: int | None = None):
    """Refuse, naming the file, a video whose frames are too small or too large, or that lasts too long (by its
    own duration; where its timing is unknown, by its frame count at `MAX_FPS`, the fastest endoscopy records).

    Raises:
        VideoLoadError: naming `name` and the limit.
    """
    if not info.width or not info.height:
        raise VideoLoadError(f"'{name}' has a video stream without a frame size (corrupt or truncated)")
    if min(info.width, info.height) < MIN_FRAME_SIDE:
        raise VideoLoadError(
            f"'{name}' has {info.width}x{info.height} frames: a side under the minimum of {MIN_FRAME_SIDE} px"
        )
    if info.width * info.height > max_pixels:
        raise VideoLoadError(f"'{name}' has {info.width}x{info.height} frames, over the limit of {max_pixels:,} pixels")
    if max_seconds is None:
        return
    if info.duration_s is not None and info.duration_s > max_seconds:
        raise VideoLoadError(f"'{name}' lasts {info.duration_s:.1f} s, over the limit of {max_seconds:g} s")
    if info.timing == "unknown" and frames is not None and frames > max_seconds * MAX_FPS:
        raise VideoLoadError(
            f"'{name}' has {frames} frames and no frame times: over the limit of {max_seconds:g} s at "
            f"{MAX_FPS} frames/s"
        )


class ContainerVideo(VideoSource):
    """A video file read by PyAV (FFmpeg): MP4, MOV, MKV, WebM, AVI, MPEG-TS, a bare H.264/HEVC/MPEG-2 stream.
    Frames come upright (rotation metadata and non-square pixels applied), HDR tone-mapped to SDR, and timed
    from the first frame by the container's stamps. A bare elementary stream has no stamps: its own rate (an
    H.264 SPS's timing) times it where it gives one, else its timing is unknown.

    Raises (on opening):
        VideoLoadError: not a readable video, no video stream, a still image, or over a limit; naming the file
            as `name` (the user's, where the file is a temporary copy).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
        name: str | None = None,
        bare: bool = False,
    ) -> None:
        self.path, self.name = path, name or Path(path).name
        self.max_pixels, self.max_seconds = max_pixels, max_seconds
        container, stream = _open(path, self.name)
        try:
            width, height = stream.codec_context.width, stream.codec_context.height
            width = _widen(width, stream.sample_aspect_ratio) if width else width
            own = stream.codec_context.framerate  # a bare stream's own rate (an H.264 SPS's timing), or 0
            if bare:
                fps = float(own) if own else None
                timing = "stream" if fps else "unknown"
            else:
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                fps, timing = (float(rate) if rate else 25.0), "container"
            duration = None
            if not bare and stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif not bare and container.duration is not None:
                duration = container.duration / 1_000_000
            codec = stream.codec_context.name
            hdr = HDR_TRANSFERS.get(int(getattr(stream.codec_context, "color_trc", 0) or 0))
        finally:
            container.close()
        self.info = VideoInfo(width, height, fps, duration, codec, hdr, timing)
        check_limits(self.name, self.info, max_pixels, max_seconds)

    def frames(self) -> Iterator[Frame]:
        """Decode the video stream frame by frame (audio and cover pictures are ignored); errors name the file
        and frame."""
        av = _av()
        name, max_pixels, max_seconds, info = self.name, self.max_pixels, self.max_seconds, self.info
        container, stream = _open(self.path, name)
        count = 0
        start = None  # recorders and cut segments stamp their first frame at 100 s as readily as at 0
        try:
            stream.thread_type = "AUTO"  # FFmpeg decodes in its own threads, outside the GIL
            try:
                for frame in container.decode(stream):
                    if info.timing == "container":
                        stamp = float(frame.time) if frame.time is not None else None
                        if start is None and stamp is not None:
                            start = stamp
                        time = stamp - start if stamp is not None else count / info.fps
                    else:  # a bare stream: its own rate, or no time at all
                        time = count / info.fps if info.fps else None
                    if max_seconds is not None and time is not None and time > max_seconds:
                        raise VideoLoadError(f"'{name}' runs past the limit of {max_seconds:g} s")
                    if frame.width * frame.height > max_pixels:
                        raise VideoLoadError(
                            f"'{name}' has a {frame.width}x{frame.height} frame, over the limit of {max_pixels:,} "
                            "pixels"
                        )
                    if min(frame.width, frame.height) < MIN_FRAME_SIDE:
                        raise VideoLoadError(
                            f"'{name}' frame {count} is {frame.width}x{frame.height}: a side under the minimum of "
                            f"{MIN_FRAME_SIDE} px"
                        )
                    # HDR (HLG, PQ) frames are tone-mapped to SDR BT.709 first: the model and the overlay see SDR.
                    pixels = hdr_frame_to_rgb(frame) if hdr_transfer(frame) else frame.to_ndarray(format="rgb24")
                    rgb = upright(pixels, frame.rotation, stream.sample_aspect_ratio)
                    yield Frame(count, time, rgb)
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


def fit_frame(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """`rgb` scaled to fit inside width x height with its aspect kept, centred on black."""
    scale = min(width / rgb.shape[1], height / rgb.shape[0])
    fitted_w, fitted_h = max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))
    resized = cv2.resize(rgb, (fitted_w, fitted_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.zeros((height, width, 3), np.uint8)
    top, left = (height - fitted_h) // 2, (width - fitted_w) // 2
    canvas[top : top + fitted_h, left : left + fitted_w] = resized
    return canvas


class VideoWriter:
    """H.264 (yuv420p) MP4 that browsers play, encoded in a thread of its own and written atomically:
    the file appears at `path` only when `close()` succeeds. Odd frame sizes lose their last row or column.

    Each frame keeps the time it is written with (`write(rgb, time)`: a variable-rate recording plays in
    its own time, frame for frame, rather than at one rate; MP4 stores a time per frame), or without
    times, one frame every 1/`fps` s. The clip takes the first frame's size. A stream whose frame size
    changes (a browser recording of a phone that was turned) keeps it: each later frame of another size
    is fitted inside, undistorted, with black bars (`fit_frame`), since an MP4 stream has one size. The
    frames written are upright pixels; the file carries no rotation metadata."""

    def __init__(self, path: str | os.PathLike, fps: float, preset: str = DEFAULT_PRESET, crf: int = 23) -> None:
        self.path = prepare_output(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        self.fps, self.preset, self.crf = fps, preset, crf
        self.frames = self.frames_encoded = 0
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._last_pts = -1
        self._error: BaseException | None = None
        self._container = self._stream = None
        self._thread = threading.Thread(target=self._encode, name="neopolyp-encode", daemon=True)
        self._thread.start()

    def _setup(self, width: int, height: int) -> None:
        av = _av()
        self._container = av.open(ffmpeg_path(self.tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = TIME_BASE  # frame times to 1/90000 s, the MPEG clock
        stream.options = {"preset": self.preset, "crf": str(self.crf)}
        self._stream = stream

    def _encode(self) -> None:
        av = _av()
        while True:
            item = self._queue.get()
            if item is None:
                return
            rgb, time = item
            if self._error is not None:
                continue  # drain: the error is raised by write() or close()
            try:
                if self._stream is None:
                    self._setup(rgb.shape[1] // 2 * 2, rgb.shape[0] // 2 * 2)
                width, height = self._stream.width, self._stream.height
                if (rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2) != (height, width):  # the size changed
                    rgb = fit_frame(rgb, width, height)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:height, :width]), format="rgb24")
                # Its own time where given (strictly after the last: a container needs rising times).
                at = time if time is not None else self.frames_encoded / self.fps
                pts = round(at / TIME_BASE)
                frame.pts, frame.time_base = max(pts, self._last_pts + 1), TIME_BASE
                self._last_pts = frame.pts
                self.frames_encoded += 1
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
            except BaseException as error:
                self._error = error

    def write(self, rgb: np.ndarray, time: float | None = None) -> None:
        """Queue one HxWx3 uint8 RGB frame, shown at `time` s from the first frame (None: 1/fps after the last
        one); blocks while the encoder is 8 frames behind."""
        if self._error is not None:
            raise self._error
        self._queue.put((rgb, time))
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
