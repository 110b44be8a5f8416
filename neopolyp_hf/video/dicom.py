"""DICOM video: a recorded procedure (Video Endoscopic Image Storage, or a multi-frame Secondary Capture) as
frames, through the same checks as any clip.

An encapsulated MPEG stream (MPEG-2, H.264 in any of its transfer syntaxes, the fragmentable `.x.1` forms
included, HEVC) is joined from its fragments (pydicom) and read by the project's PyAV path from a temporary
file: rotation, start time, frame size and length limits all apply. Where the stream is a bare elementary
stream, it carries no frame times, and the DICOM's own (Frame Time Vector, Frame Time, Cine Rate) time the
frames. A multi-frame uncompressed or JPEG object is decoded frame by frame by pydicom.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..dicom import check_image, decode_frames, read_dataset
from ..errors import ImageLoadError, VideoLoadError

MPEG2, H264, HEVC = "MPEG-2", "H.264", "HEVC"
# Transfer syntax UID (without the root 1.2.840.10008.1.2.4.) -> the codec of the encapsulated stream.
MPEG_SYNTAXES = {
    **{f"1.2.840.10008.1.2.4.{n}": MPEG2 for n in ("100", "100.1", "101", "101.1")},
    **{f"1.2.840.10008.1.2.4.{n}": H264 for n in ("102", "102.1", "103", "103.1", "104", "104.1", "105", "105.1")},
    **{f"1.2.840.10008.1.2.4.{n}": H264 for n in ("106", "106.1")},
    **{f"1.2.840.10008.1.2.4.{n}": HEVC for n in ("107", "108")},
}
ELEMENTARY_SUFFIX = {MPEG2: ".mpg", H264: ".h264", HEVC: ".hevc"}


def frame_times(dataset, count: int) -> np.ndarray | None:
    """Each frame's time in seconds from the DICOM (Frame Time Vector, Frame Time, Cine Rate, Recommended
    Display Frame Rate, in that order), or None where it says none."""
    vector = getattr(dataset, "FrameTimeVector", None)
    if vector is not None and len(vector) >= count:
        return np.cumsum(np.asarray(vector[:count], dtype=float)) / 1000.0 - float(vector[0]) / 1000.0
    for field, to_seconds in (
        ("FrameTime", lambda v: float(v) / 1000.0),
        ("CineRate", lambda v: 1.0 / float(v)),
        ("RecommendedDisplayFrameRate", lambda v: 1.0 / float(v)),
    ):
        value = getattr(dataset, field, None)
        if value not in (None, "") and float(value) > 0:
            return np.arange(count) * to_seconds(value)
    return None


@contextlib.contextmanager
def _stream_file(dataset, name: str) -> Iterator[tuple[Path, bool]]:
    """The encapsulated stream as a temporary file, and whether it is a bare elementary stream (no times)."""
    from pydicom.encaps import generate_fragments

    codec = MPEG_SYNTAXES[str(dataset.file_meta.TransferSyntaxUID)]
    try:
        items = list(generate_fragments(dataset.PixelData))
        data = b"".join(items[1:])  # the first item is the Basic Offset Table, not video
    except (ValueError, EOFError) as error:
        raise VideoLoadError(f"{name} has truncated or corrupt encapsulated video ({type(error).__name__})") from error
    wrapped = data[4:8] == b"ftyp"  # an MP4 inside the DICOM: its own container times the frames
    with tempfile.TemporaryDirectory(prefix="neopolyp-dicom-") as folder:
        path = Path(folder) / ("stream.mp4" if wrapped else f"stream{ELEMENTARY_SUFFIX[codec]}")
        path.write_bytes(data)
        yield path, not wrapped


def _load(path: str | os.PathLike):
    name = f"'{Path(path).name}'"
    try:
        dataset = read_dataset(path, name)
        summary = check_image(dataset, name)
    except ImageLoadError as error:
        raise VideoLoadError(str(error)) from error
    return dataset, summary, name


def _video_info(dataset, summary, name: str, stream: tuple[Path, bool] | None, max_pixels: int, max_seconds):
    """The object's size, rate and length, checked against the limits: from its stream (a bare one timed by the
    DICOM), or from its header (frames decoded by pydicom)."""
    from .io import MIN_FRAME_SIDE, VideoInfo, probe_video

    times = frame_times(dataset, summary.frames)
    if stream is not None:
        info = probe_video(stream[0], max_pixels, None)
        if stream[1] and times is not None:
            fps = 1.0 / float(np.diff(times).mean()) if summary.frames > 1 else info.fps
            info = VideoInfo(info.width, info.height, fps, summary.frames / fps, info.codec)
    else:
        if min(summary.rows, summary.columns) < MIN_FRAME_SIDE:
            raise VideoLoadError(f"{name} has {summary.columns}x{summary.rows} frames: under {MIN_FRAME_SIDE} px")
        fps = 1.0 / float(np.diff(times).mean()) if times is not None and summary.frames > 1 else 25.0
        info = VideoInfo(summary.columns, summary.rows, fps, summary.frames / fps, "dicom")
    if info.width * info.height > max_pixels:
        raise VideoLoadError(f"{name} has {info.width}x{info.height} frames, over the limit of {max_pixels:,} pixels")
    if max_seconds is not None and info.duration_s is not None and info.duration_s > max_seconds:
        raise VideoLoadError(f"{name} lasts {info.duration_s:.1f} s, over the limit of {max_seconds:g} s")
    return info


def _is_stream(dataset) -> bool:
    return str(dataset.file_meta.TransferSyntaxUID) in MPEG_SYNTAXES


def probe_dicom_video(path: str | os.PathLike, max_pixels: int, max_seconds: float | None):
    """`probe_video` for a DICOM object: its size, rate and length, checked against the limits."""
    dataset, summary, name = _load(path)
    if not _is_stream(dataset):
        return _video_info(dataset, summary, name, None, max_pixels, max_seconds)
    with _stream_file(dataset, name) as stream:
        return _video_info(dataset, summary, name, stream, max_pixels, max_seconds)


def read_dicom_frames(path: str | os.PathLike, max_pixels: int, max_seconds: float | None):
    """`read_frames` for a DICOM object: Frame(index, time, rgb) in order, timed by the stream or the DICOM.
    The object is read, and its stream written out, once."""
    from .io import Frame, read_frames

    dataset, summary, name = _load(path)
    times = frame_times(dataset, summary.frames)
    if _is_stream(dataset):
        with _stream_file(dataset, name) as stream:
            info = _video_info(dataset, summary, name, stream, max_pixels, max_seconds)
            for frame in read_frames(stream[0], max_pixels, max_seconds):
                if stream[1]:  # a bare stream has no times of its own: the DICOM's, else its rate's
                    time = float(times[frame.index]) if times is not None and frame.index < len(times) else None
                    frame = Frame(frame.index, frame.index / info.fps if time is None else time, frame.rgb)
                yield frame
        return
    info = _video_info(dataset, summary, name, None, max_pixels, max_seconds)
    for index in range(summary.frames):
        try:
            rgb = decode_frames(dataset, name, index=index if "NumberOfFrames" in dataset else None)
        except ImageLoadError as error:
            raise VideoLoadError(f"{error} (frame {index})") from error
        yield Frame(index, float(times[index]) if times is not None else index / info.fps, rgb)
