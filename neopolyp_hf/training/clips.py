"""Test clips made from still frames: a moving camera (zoom, pan, roll, breathing light) over one frame
per scene, with the true mask warped alongside, so every frame of the clip has ground truth."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from ..atomic import write_atomic
from ..masks import polyp_box
from ..video.io import _av

# (codec, container format, pixel format) for each kind of clip that the tests and benchmark write.
CLIP_CODECS = {
    ".mp4": ("libx264", "mp4", "yuv420p"),
    ".webm": ("libvpx-vp9", "webm", "yuv420p"),
    ".avi": ("mjpeg", "avi", "yuvj420p"),
    ".av1.mp4": ("libsvtav1", "mp4", "yuv420p"),
    ".y4m": ("rawvideo", "yuv4mpegpipe", "yuv420p"),  # what Chromium's fake camera plays
}


def camera_transform(t: float, width: int, height: int, center: tuple[float, float], zoom: float) -> np.ndarray:
    """The 2x3 affine map of a camera at time t in [0, 1]: zooming in towards `center` by up to `zoom`,
    panning a little and rolling a few degrees."""
    scale = 1.0 + (zoom - 1.0) * (0.5 - 0.5 * math.cos(math.pi * t))
    angle = 4.0 * math.sin(2 * math.pi * t)
    pan_x = 0.04 * width * math.sin(2 * math.pi * t * 0.7)
    pan_y = 0.03 * height * math.sin(2 * math.pi * t * 0.9 + 1.0)
    # The zoom's centre moves from the frame's centre towards the polyp's as the camera closes in.
    w = (scale - 1.0) / max(zoom - 1.0, 1e-6)
    cx = (1 - w) * width / 2 + w * center[0]
    cy = (1 - w) * height / 2 + w * center[1]
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    matrix[0, 2] += width / 2 - cx + pan_x
    matrix[1, 2] += height / 2 - cy + pan_y
    return matrix


def scene_frames(
    image: np.ndarray, mask: np.ndarray, frames: int, size: tuple[int, int], zoom: float = 1.4
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(frame, true mask) pairs of one scene at `size` (width, height), the camera moving over `image`."""
    width, height = size
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    box = polyp_box(mask)
    center = ((box[1].start + box[1].stop) / 2, (box[0].start + box[0].stop) / 2) if box else (width / 2, height / 2)
    for i in range(frames):
        t = i / max(frames - 1, 1)
        matrix = camera_transform(t, width, height, center, zoom)
        frame = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        truth = cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
        light = 1.0 + 0.15 * math.sin(2 * math.pi * 1.5 * t)  # breathing light: brighter, then dimmer
        yield cv2.convertScaleAbs(frame, alpha=light), truth


def clip_frames(
    scenes: Sequence[tuple[np.ndarray, np.ndarray]], frames_per_scene: int, size: tuple[int, int]
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(scene, frame, true mask) for several scenes in a row: a cut between each two."""
    for scene, (image, mask) in enumerate(scenes):
        for frame, truth in scene_frames(image, mask, frames_per_scene, size):
            yield scene, frame, truth


def write_clip(
    path: str | os.PathLike,
    frames: Sequence[np.ndarray] | Iterator[np.ndarray],
    fps: float = 25.0,
    audio: bool = False,
    variable_rate: bool = False,
) -> Path:
    """Encode RGB frames as a clip whose codec follows the file name (.mp4 H.264, .webm VP9, .avi MJPEG,
    .av1.mp4 AV1, .y4m raw); optionally with a silent audio track, or with frame times that vary (variable rate)."""
    av = _av()
    path = Path(path)
    suffix = ".av1.mp4" if path.name.endswith(".av1.mp4") else path.suffix
    codec, container_format, pix_fmt = CLIP_CODECS[suffix]

    def write(tmp: Path) -> None:
        with av.open(str(tmp), mode="w", format=container_format) as container:
            stream = None
            sound = container.add_stream("aac", rate=16000) if audio else None
            time_base = Fraction(1, 1000)
            for i, rgb in enumerate(frames):
                if stream is None:
                    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                    stream.height, stream.width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
                    stream.pix_fmt = pix_fmt
                    if variable_rate:
                        stream.time_base = time_base
                frame = av.VideoFrame.from_ndarray(rgb[: stream.height, : stream.width], format="rgb24")
                if variable_rate:  # gaps of one or two frame intervals, in turn
                    frame.pts = int(sum(1 + (k % 2) for k in range(i)) * 1000 / fps)
                    frame.time_base = time_base
                for packet in stream.encode(frame):
                    container.mux(packet)
                if sound is not None:
                    samples = int(16000 / fps)
                    silence = av.AudioFrame.from_ndarray(
                        np.zeros((1, samples), np.float32), format="fltp", layout="mono"
                    )
                    silence.sample_rate = 16000
                    silence.pts = i * samples
                    for packet in sound.encode(silence):
                        container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
            if sound is not None:
                for packet in sound.encode():
                    container.mux(packet)

    return write_atomic(path, write)
