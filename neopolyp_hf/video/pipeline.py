"""A model over a video: frames in (a file or a camera's iterator), tracked results out, and the outputs
that a clip gives (overlaid MP4, per-frame timeline, track table, mask PNGs)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic
from ..classes import display_name, yes_no
from ..inference import Segmenter
from ..lesions import Lesion, outline_uncertain
from ..masks import FrameLegend, class_percentages, overlay_mask, save_mask_png
from ..preprocessing import DEFAULT_MAX_PIXELS
from .io import DEFAULT_MAX_SECONDS, DEFAULT_PRESET, Frame, VideoSource, VideoWriter, prefetch
from .sources import CameraFrames, open_video
from .tracking import LesionTracker, Track

TIMELINE_HEADERS = ["frame", "time_s", "neoplastic_percent", "non_neoplastic_percent", "track_ids"]
TRACK_HEADERS = [
    "track_id",
    "class",
    "p_neoplastic_given_polyp",
    "uncertain",
    "first_frame",
    "last_frame",
    "frames_seen",
    "largest_area_px",
]


@dataclass
class VideoFrameResult:
    """One frame's result: its mask after tracking, the polyp percentages and the tracked lesions."""

    index: int
    time: float
    frame: np.ndarray = field(repr=False)  # HxWx3 uint8 RGB
    mask: np.ndarray = field(repr=False)  # HxW uint8 class indices
    percentages: dict[str, float]
    lesions: list[Lesion]
    inferred: bool  # whether the model ran on this frame (False: the last result reused, see `every`)
    scene_cut: bool = False

    @property
    def track_ids(self) -> list[int]:
        """The ids of the tracks seen in this frame, once each (a track may hold several pieces)."""
        return sorted({lesion.track_id for lesion in self.lesions if lesion.track_id is not None})


def segment_video(
    model: Segmenter,
    source: str | os.PathLike | VideoSource | Iterable[np.ndarray],
    *,
    tracking: bool = True,
    tracker: LesionTracker | None = None,
    every: int = 1,
    tta: bool = False,
    fps: float = 30.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
) -> Iterator[VideoFrameResult]:
    """Yield one result per frame of a video file, of an open `VideoSource` (`sources.open_video`: read once,
    closed by its opener), or of an iterator of HxWx3 uint8 frames (a camera, timed at `fps`) or of timed
    `Frame`s. With `tracking`, lesions carry track ids and every pixel of a lesion takes its track's class (pass
    a `tracker` to read its tracks afterwards); `every` N runs the model on every Nth frame only, the frames
    between reusing the last result."""
    if every < 1:
        raise ValueError(f"every must be 1 or more, got {every}")
    if isinstance(source, (str, os.PathLike)):
        with open_video(source, max_pixels, max_seconds) as opened:
            yield from segment_video(
                model, opened, tracking=tracking, tracker=tracker, every=every, tta=tta, max_pixels=max_pixels
            )
        return
    if isinstance(source, VideoSource):
        frames: Iterator[Frame] = prefetch(source.frames())
    else:
        frames = CameraFrames(source, fps).frames()
    config = model._inference_config
    if tracking and tracker is None:
        tracker = LesionTracker(config["class_names"], config["uncertain_range"])
    last: VideoFrameResult | None = None
    for frame in frames:
        if frame.rgb.ndim != 3 or frame.rgb.shape[2] != 3:
            raise ValueError(f"frame {frame.index} must be HxWx3 RGB, got shape {frame.rgb.shape}")
        reuse = last is not None and frame.index % every and last.mask.shape == frame.rgb.shape[:2]
        if reuse:
            last = VideoFrameResult(
                frame.index, frame.time, frame.rgb, last.mask, last.percentages, last.lesions, inferred=False
            )
            yield last
            continue
        prediction = model.predict(frame.rgb, tta=tta, max_pixels=max_pixels)
        mask, lesions, cut = prediction.mask, prediction.lesions, False
        if tracking:
            mask, lesions, cut = tracker.update(frame.index, frame.rgb, mask, lesions)
        percentages = class_percentages(mask, config["class_names"])
        last = VideoFrameResult(frame.index, frame.time, frame.rgb, mask, percentages, lesions, True, cut)
        yield last
    if tracker is not None:
        tracker.end_all()


def timeline_row(result: VideoFrameResult) -> list:
    """One timeline.csv row."""
    return [
        result.index,
        f"{result.time:.3f}" if result.time is not None else "",  # empty: the source's timing is unknown
        f"{result.percentages.get('neoplastic', 0.0):.4f}",
        f"{result.percentages.get('non_neoplastic', 0.0):.4f}",
        " ".join(map(str, result.track_ids)),
    ]


def track_rows(tracks: list[Track], class_names: list[str], uncertain_range: tuple[float, float]) -> list[list]:
    """One tracks.csv row per track, the longest seen first (then the largest): the polyps that matter
    come before the fragments seen for a frame or two."""
    low, high = uncertain_range
    return [
        [
            t.id,
            class_names[t.class_index],
            f"{t.neoplastic_probability:.4f}",
            yes_no(low <= t.neoplastic_probability <= high),
            t.first_frame,
            t.last_frame,
            t.frames_seen,
            t.largest_area,
        ]
        for t in sorted(tracks, key=lambda t: (-t.frames_seen, -t.largest_area, t.id))
    ]


def csv_text(headers: list[str], rows: Iterable[list]) -> str:
    """A CSV document as text (written atomically by the caller)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return buffer.getvalue()


@dataclass
class VideoOutputs:
    """What `write_video_outputs` produced: the files written and the per-frame rows."""

    frames: int
    timeline: list[list]
    tracks: list[list]
    files: dict[str, Path]


def clip_legend(frame: np.ndarray, config: dict) -> FrameLegend:
    """The legend of a clip whose frames are the size of `frame`: the polyp classes' colours and names."""
    names = [display_name(n) for n in config["class_names"][1:]]
    return FrameLegend(frame.shape[1::-1], names, config["class_colors"][1:])


def overlay_frame(result: VideoFrameResult, config: dict, legend: FrameLegend, opacity: float = 0.5) -> np.ndarray:
    """One frame of an overlaid clip: the class colours blended in, uncertain lesions outlined, and the legend
    with the research-only mark stamped in its corner (H x W x 3 uint8)."""
    overlaid = np.array(overlay_mask(result.frame, result.mask, config["class_colors"], opacity))
    return legend.stamp(outline_uncertain(overlaid, result.mask, result.lesions))


def write_video_outputs(
    model: Segmenter,
    video: str | os.PathLike | VideoSource,
    *,
    output_video: str | os.PathLike | None = None,
    timeline: str | os.PathLike | None = None,
    tracks: str | os.PathLike | None = None,
    masks_dir: str | os.PathLike | None = None,
    tracking: bool = True,
    every: int = 1,
    tta: bool = False,
    opacity: float = 0.5,
    preset: str = DEFAULT_PRESET,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    progress=None,
) -> VideoOutputs:
    """Segment a clip and write what was asked for: the overlaid H.264 MP4, timeline.csv, tracks.csv and
    one lossless PNG per frame (DIR/frame_000000.png). Every file is written atomically: a failure
    leaves no half-written output. `progress(done, total)` is called after each frame. `video` is a path, or a
    source already open (read once: its opener closes it)."""
    with contextlib.ExitStack() as stack:  # a path is opened here, once, and closed at the end
        if not isinstance(video, VideoSource):
            video = stack.enter_context(open_video(video, max_pixels, max_seconds))
        info = video.info
        config = model._inference_config
        tracker = LesionTracker(config["class_names"], config["uncertain_range"]) if tracking else None
        total = int(round(info.duration_s * info.fps)) if info.duration_s and info.fps else None
        # Frames without times (unknown timing) are written at the conventional 25 frames/s: the clip must play.
        writer = VideoWriter(output_video, info.fps or 25.0, preset=preset) if output_video else None
        made_masks_dir = bool(masks_dir) and not Path(masks_dir).exists()
        if masks_dir:
            Path(masks_dir).mkdir(parents=True, exist_ok=True)
        rows, written, legend = [], [], None
        try:
            for result in segment_video(
                model,
                video,
                tracking=tracking,
                tracker=tracker,
                every=every,
                tta=tta,
                max_pixels=max_pixels,
                max_seconds=max_seconds,
            ):
                if writer is not None:
                    legend = legend or clip_legend(result.frame, config)
                    # Each frame at its own time: a variable frame rate is kept.
                    writer.write(overlay_frame(result, config, legend, opacity), result.time)
                if masks_dir:
                    written.append(Path(masks_dir) / f"frame_{result.index:06d}.png")  # before it exists: a signal
                    save_mask_png(result.mask, written[-1], config["class_colors"])  # mid-write leaves it listed
                rows.append(timeline_row(result))
                if progress is not None:
                    progress(len(rows), total)
        except BaseException:
            if writer is not None:
                writer.abort()
            for path in written:  # a failed run leaves no partial set of masks either
                path.unlink(missing_ok=True)
            if made_masks_dir and not any(Path(masks_dir).iterdir()):
                Path(masks_dir).rmdir()  # nor a folder it made
            raise
        files = {}
        if writer is not None:
            files["video"] = writer.close()
        table = track_rows(tracker.tracks, config["class_names"], config["uncertain_range"]) if tracker else []
        if timeline:
            files["timeline"] = write_text_atomic(timeline, csv_text(TIMELINE_HEADERS, rows))
        if tracks:
            files["tracks"] = write_text_atomic(tracks, csv_text(TRACK_HEADERS, table))
        if masks_dir:
            files["masks"] = Path(masks_dir)
        return VideoOutputs(len(rows), rows, table, files)
