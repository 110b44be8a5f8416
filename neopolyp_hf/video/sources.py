"""One home for reading a source of frames: `open_video` recognises what a file is by its content and hands
back the one reader for it, behind the `VideoSource` interface (what it is, how large, how long, how it is
timed, and its frames). The pipeline, the CLIs, the Space and archive mode all ask here, once per request.

    ContainerVideo  a video file through PyAV (io.py)
    DicomVideo      a DICOM video or multi-frame object (dicom.py)
    StillFrames     a sequence of stills (paths or arrays) at a given rate
    CameraFrames    frames as a camera hands them over, at a given rate

Readers sit below this module and never import it or each other upwards: io <- dicom <- sources (an import
contract in pyproject.toml keeps it so).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ..dicom import is_dicom
from ..errors import VideoLoadError
from ..preprocessing import DEFAULT_MAX_PIXELS
from .dicom import DicomVideo
from .io import DEFAULT_MAX_SECONDS, ContainerVideo, Frame, VideoInfo, VideoSource


def open_video(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, max_seconds: float | None = DEFAULT_MAX_SECONDS
) -> VideoSource:
    """The reader for a video file, chosen by its content (DICOM, Part 10 or bare, whatever its name; else a
    container PyAV reads), its size, length and timing checked against the limits before any frame is decoded.
    Close it when done (it is a context manager).

    Raises:
        VideoLoadError: missing, not a video, a `.dcm` that is not DICOM, or over a limit; naming the file.
    """
    name = Path(path).name
    if not Path(path).is_file():
        raise VideoLoadError(f"video '{name}' does not exist")
    if is_dicom(path):
        return DicomVideo(path, max_pixels, max_seconds)
    if Path(path).suffix.lower() == ".dcm":
        raise VideoLoadError(f"'{name}' has a DICOM name but is not a DICOM file (no DICM mark, no DICOM data set)")
    return ContainerVideo(path, max_pixels, max_seconds)


def probe_video(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, max_seconds: float | None = DEFAULT_MAX_SECONDS
) -> VideoInfo:
    """A video's size, rate, length and timing, checked against the limits (`open_video`, then closed)."""
    with open_video(path, max_pixels, max_seconds) as source:
        return source.info


def read_frames(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, max_seconds: float | None = DEFAULT_MAX_SECONDS
) -> Iterator[Frame]:
    """A video's frames in order, upright and timed (`open_video`); errors name the file and frame."""
    with open_video(path, max_pixels, max_seconds) as source:
        yield from source.frames()


class CameraFrames(VideoSource):
    """Frames as a camera (or any iterator of HxWx3 uint8 arrays, or of timed `Frame`s) hands them over, timed at
    `fps` where they carry no time of their own."""

    def __init__(self, frames: Iterable, fps: float, name: str = "the camera") -> None:
        self.name, self._frames = name, frames
        self.info = VideoInfo(0, 0, fps, None, "frames", None, "rate")

    def frames(self) -> Iterator[Frame]:
        for index, item in enumerate(self._frames):
            yield item if isinstance(item, Frame) else Frame(index, index / self.info.fps, np.asarray(item, np.uint8))


class StillFrames(VideoSource):
    """Stills in order (a folder of a procedure's photographs), each read by `load` and timed at `fps`; a still
    that cannot be read is handed to `skip` (with its path and the error) and left out."""

    def __init__(
        self,
        paths: list[str],
        fps: float,
        load: Callable[[str], np.ndarray],
        skip: Callable[[str, Exception], None] | None = None,
        name: str = "the stills",
    ) -> None:
        self.name, self.paths, self.load, self.skip = name, paths, load, skip
        self.read: list[str] = []  # the path of each frame yielded, in order
        self.info = VideoInfo(0, 0, fps, len(paths) / fps, "stills", None, "rate")

    def frames(self) -> Iterator[Frame]:
        from ..errors import NeoPolypError

        for path in self.paths:
            try:
                rgb = self.load(path)
            except (NeoPolypError, OSError) as error:  # one bad still: named, the rest go on
                if self.skip is None:
                    raise
                self.skip(path, error)
                continue
            index = len(self.read)
            self.read.append(path)
            yield Frame(index, index / self.info.fps, rgb)
