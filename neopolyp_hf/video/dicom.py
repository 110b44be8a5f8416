"""DICOM video: a recorded procedure (Video Endoscopic Image Storage, or a multi-frame Secondary Capture) as
one `VideoSource`, read once.

The header is read without Pixel Data. An encapsulated MPEG stream (MPEG-2, H.264 in any of its transfer
syntaxes, the fragmentable `.x.1` forms included, HEVC) is copied from the file into a temporary file one
fragment at a time (memory stays at one fragment, whatever the file's size) and read by the project's PyAV path:
rotation, frame size and limits all apply, and messages name the user's file. Frames are timed by the DICOM's
own Frame Time Vector, Frame Time or Cine Rate; else by an MP4 stream's stamps or a bare stream's own rate; else
their timing is unknown (times None), never assumed. The time limit is checked on those times. A multi-frame
uncompressed or JPEG object is decoded one frame at a time by pydicom.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..dicom import DEFLATED, EXPLICIT_LITTLE, check_image, decode_frames, pixel_data_follows, read_dataset
from ..errors import ImageLoadError, VideoLoadError
from .io import ContainerVideo, Frame, VideoInfo, VideoSource, check_limits

MPEG2, H264, HEVC = "MPEG-2", "H.264", "HEVC"
# Transfer syntax UID (without the root 1.2.840.10008.1.2.4.) -> the codec of the encapsulated stream.
MPEG_SYNTAXES = {
    **{f"1.2.840.10008.1.2.4.{n}": MPEG2 for n in ("100", "100.1", "101", "101.1")},
    **{f"1.2.840.10008.1.2.4.{n}": H264 for n in ("102", "102.1", "103", "103.1", "104", "104.1", "105", "105.1")},
    **{f"1.2.840.10008.1.2.4.{n}": H264 for n in ("106", "106.1")},
    **{f"1.2.840.10008.1.2.4.{n}": HEVC for n in ("107", "108")},
}
ELEMENTARY_SUFFIX = {MPEG2: ".mpg", H264: ".h264", HEVC: ".hevc"}
PIXEL_DATA_TAG = 0x7FE00010


def frame_times(dataset, count: int) -> np.ndarray | None:
    """Each frame's time in seconds from the DICOM (Frame Time Vector, Frame Time, Cine Rate, Recommended
    Display Frame Rate, in that order), or None where it says none, or says nothing usable (a zero or negative
    time, a vector of zeros).

    Raises:
        VideoLoadError: never; a malformed value counts as none.
    """
    vector = getattr(dataset, "FrameTimeVector", None)
    if vector is not None and len(vector) >= count:
        try:
            steps = np.asarray(vector[:count], dtype=float)
        except (TypeError, ValueError):
            steps = None
        # The vector's first entry is 0 (the first frame); every later one is the time since the one before.
        if steps is not None and np.all(np.isfinite(steps)) and (count < 2 or np.all(steps[1:] > 0)):
            return (np.cumsum(steps) - steps[0]) / 1000.0
    for field, to_seconds in (
        ("FrameTime", lambda v: float(v) / 1000.0),
        ("CineRate", lambda v: 1.0 / float(v)),
        ("RecommendedDisplayFrameRate", lambda v: 1.0 / float(v)),
    ):
        value = getattr(dataset, field, None)
        try:
            if value not in (None, "") and float(value) > 0 and np.isfinite(float(value)):
                return np.arange(count) * to_seconds(value)
        except (TypeError, ValueError):
            continue
    return None


def _copy_stream(path: str | os.PathLike, name: str, target: Path) -> None:
    """Copy the encapsulated stream of the DICOM at `path` into `target`, one fragment at a time (the Basic
    Offset Table left out): memory holds one fragment, whatever the file's size.

    Raises:
        VideoLoadError: the Pixel Data is missing, truncated or not encapsulated.
    """
    import pydicom
    from pydicom.encaps import generate_fragments

    with open(path, "rb") as handle:
        pydicom.dcmread(handle, stop_before_pixels=True, force=True)  # leaves the file at the Pixel Data element
        header = handle.read(12)  # (7FE0,0010), VR OB, two reserved bytes, the undefined length
        if len(header) < 12 or header[:4] != b"\xe0\x7f\x10\x00" or header[8:12] != b"\xff\xff\xff\xff":
            raise VideoLoadError(f"{name} has no encapsulated Pixel Data after its header")
        try:
            with open(target, "wb") as out:
                for index, fragment in enumerate(generate_fragments(handle)):
                    if index:  # the first item is the Basic Offset Table, not video
                        out.write(fragment)
            # pydicom stops quietly at the end of the file: a whole stream ends with its Sequence Delimiter.
            handle.seek(-4, os.SEEK_CUR)  # the generator stops having read the delimiter's tag
            if handle.read(4) != b"\xfe\xff\xdd\xe0":
                raise EOFError("the stream ends before its Sequence Delimiter")
        except (ValueError, EOFError, OSError) as error:
            kind = type(error).__name__
            raise VideoLoadError(f"{name} has truncated or corrupt encapsulated video ({kind})") from error


class DicomVideo(VideoSource):
    """A DICOM video or multi-frame object as a `VideoSource`: the header read once, the stream (if any)
    copied out once, kept until `close`.

    Raises (on opening):
        VideoLoadError: not a colour image object, truncated, or over a limit; naming the file.
    """

    def __init__(self, path: str | os.PathLike, max_pixels: int, max_seconds: float | None) -> None:
        self.path, self.name = path, Path(path).name
        label = f"'{self.name}'"
        self.max_pixels, self.max_seconds = max_pixels, max_seconds
        try:
            self.header = read_dataset(path, label, stop_before_pixels=True)
            deflated = str(self.header.file_meta.TransferSyntaxUID) == EXPLICIT_LITTLE and self._deflated_file()
            self.summary = check_image(self.header, label, has_pixels=deflated or pixel_data_follows(path))
        except ImageLoadError as error:
            raise VideoLoadError(str(error)) from error
        self.times = frame_times(self.header, self.summary.frames)
        self.folder = None
        self.stream: ContainerVideo | None = None
        syntax = str(self.header.file_meta.TransferSyntaxUID)
        try:
            if syntax in MPEG_SYNTAXES:
                self.folder = tempfile.mkdtemp(prefix="neopolyp-dicom-")
                target = Path(self.folder) / f"stream{ELEMENTARY_SUFFIX[MPEG_SYNTAXES[syntax]]}"
                _copy_stream(path, label, target)
                wrapped = target.read_bytes()[4:8] == b"ftyp" if target.stat().st_size >= 8 else False
                if wrapped:  # an MP4 inside the DICOM: its own container times the frames
                    target = target.rename(target.with_name("stream.mp4"))
                own_limit = None if self.times is not None or not wrapped else max_seconds
                self.stream = ContainerVideo(target, max_pixels, own_limit, name=self.name, bare=not wrapped)
                self.info = self._info(self.stream.info)
            else:
                self.info = self._info(None)
        except BaseException:
            self.close()
            raise

    def _info(self, stream: VideoInfo | None) -> VideoInfo:
        summary, times = self.summary, self.times
        if times is not None:
            fps = (summary.frames - 1) / float(times[-1]) if summary.frames > 1 and times[-1] > 0 else None
            step = float(np.diff(times).mean()) if summary.frames > 1 else None
            duration = float(times[-1] + step) if step else None
            timing = "dicom"
        elif stream is not None:
            fps, timing = stream.fps, stream.timing
            duration = stream.duration_s if stream.duration_s is not None else (summary.frames / fps if fps else None)
        else:
            fps, duration, timing = None, None, "unknown"
        width, height = (stream.width, stream.height) if stream is not None else (summary.columns, summary.rows)
        codec = stream.codec if stream is not None else "dicom"
        info = VideoInfo(width, height, fps, duration, codec, stream.hdr if stream else None, timing)
        check_limits(self.name, info, self.max_pixels, self.max_seconds, summary.frames)
        return info

    def frames(self) -> Iterator[Frame]:
        """Frame(index, time, rgb) in order, timed by the DICOM, else the stream, else None."""
        times = self.times
        if self.stream is not None:
            for frame in self.stream.frames():
                if times is not None:  # the object's own times win over the stream's
                    time = float(times[frame.index]) if frame.index < len(times) else None
                    if time is None:
                        break  # frames past those the object counts are not part of it
                    frame = Frame(frame.index, time, frame.rgb)
                yield frame
            return
        label = f"'{self.name}'"
        # A Part 10 file is read one frame at a time from disk by pydicom; a bare or deflated data set (old
        # archives: small) is read once, under the inflation bound.
        per_frame = self._part10() and not self._deflated_file()
        source = self.path if per_frame else read_dataset(self.path, label, max_bytes=self._max_bytes())
        syntax = str(self.header.file_meta.TransferSyntaxUID)
        for index in range(self.summary.frames):
            try:
                rgb = decode_frames(source, label, index=index, syntax=syntax)
            except ImageLoadError as error:
                raise VideoLoadError(f"{error} (frame {index})") from error
            if rgb.ndim == 4:  # one frame asked of an object without Number of Frames
                rgb = rgb[0]
            yield Frame(index, float(times[index]) if times is not None else None, rgb)

    def _part10(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"

    def _deflated_file(self) -> bool:
        from pydicom.filereader import read_file_meta_info

        try:
            return str(read_file_meta_info(self.path).get("TransferSyntaxUID", "")) == DEFLATED
        except Exception:  # noqa: BLE001 - a bare data set has no File Meta: not deflated
            return False

    def _max_bytes(self) -> int:
        summary = self.summary
        return summary.rows * summary.columns * 3 * 2 * summary.frames + (16 << 20)

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
