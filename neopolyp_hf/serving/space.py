"""What serving needs beyond `predict`: the backend choice, loading with provenance, and display tables."""

from __future__ import annotations

import collections
import ctypes
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..classes import CLASS_COLORS, CLASS_NAMES, display_name, yes_no
from ..dicom import is_dicom, read_dataset, summarize
from ..errors import NeoPolypError
from ..inference import Prediction, uncertainty_colors, uncertainty_levels, uncertainty_view
from ..lesions import outline_uncertain
from ..masks import UNCERTAIN_OUTLINE, overlay_mask, polyp_box
from ..preprocessing import DEFAULT_MAX_PIXELS, load_image

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process (as MALLOC_ARENA_MAX does); False where that is not
    glibc or MALLOC_ARENA_MAX is set already.

    A server's worker threads each grow an arena of their own, up to eight per core, and RSS then
    crept up with every request although nothing was kept (1169 -> 1402 MB over 500 requests; flat
    with two arenas, at the same speed).
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def percentages_summary(prediction: Prediction) -> dict[str, dict[str, float]]:
    """Per polyp class: % of the whole image and % of the polyp area, rounded for display."""
    return {
        name: {
            "percent_of_image": round(prediction.percentages[name], 3),
            "percent_of_polyp_area": round(prediction.polyp_percentages[name], 3),
        }
        for name in prediction.class_names[1:]
    }


def frame_sentences(percentages: dict[str, float]) -> str:
    """One line per polyp class: its share of the frame (a camera's live numbers)."""
    return "\n".join(f"- **{display_name(name)}**: {share_text(p, 1)} of the frame" for name, p in percentages.items())


def share_text(percent: float, decimals: int) -> str:
    """A share for people: rounded to `decimals`, but never "0" for a share that is not zero
    ("< 0.1%" beside a listed lesion, not "0.0%")."""
    smallest = 10.0**-decimals
    if 0 < percent < smallest:
        return f"< {smallest:.{decimals}f}%"
    return f"{percent:.{decimals}f}%"


def percentages_sentences(summary: dict[str, dict[str, float]]) -> str:
    """One short sentence per polyp class (from `percentages_summary`): its share of the image and
    of the polyp area."""
    if not any(shares["percent_of_image"] for shares in summary.values()):
        return "No polyp pixels found."
    return "\n".join(
        f"- **{display_name(name)}**: {share_text(shares['percent_of_image'], 1)} of the image, "
        f"{share_text(shares['percent_of_polyp_area'], 0)} of the polyp area"
        for name, shares in summary.items()
    )


@dataclass(frozen=True)
class KeptPrediction:
    """What a session keeps of its last prediction, for the re-blend, the uncertainty view and the
    mask download.

    The frame stays in its file, the mask is PNG-compressed and the uncertainty kept at the model's
    resolution: tens of kB per session instead of the frame's megabytes, which matters when every
    API call opens a session of its own.
    """

    image_path: str
    mask_size: tuple[int, int]  # height, width
    polyp_origin: tuple[int, int]  # top, left of the box around the polyp pixels
    polyp_png: bytes  # the mask inside that box (b"" where there is no polyp)
    uncertainty_png: bytes  # model-resolution uint8 levels
    class_colors: tuple[tuple[int, int, int], ...]
    uncertain_labels: tuple[int, ...] = ()  # the lesions flagged uncertain (their label_lesions numbers)

    @classmethod
    def of(cls, prediction: Prediction, image_path: str) -> KeptPrediction:
        """Keep `prediction`, made from the image file at `image_path`."""
        mask = prediction.mask
        box = polyp_box(mask)  # only the box is encoded: a full-frame PNG took ~10 ms
        origin = (box[0].start, box[1].start) if box else (0, 0)
        polyp_png = _png(np.ascontiguousarray(mask[box])) if box else b""
        colors = tuple(tuple(int(v) for v in color) for color in prediction.class_colors)
        uncertainty_png = _png(uncertainty_levels(prediction.scores))
        uncertain = tuple(lesion.label for lesion in prediction.lesions if lesion.uncertain)
        return cls(str(image_path), mask.shape, origin, polyp_png, uncertainty_png, colors, uncertain)

    @property
    def mask(self) -> np.ndarray:
        """The class-index mask (HxW uint8)."""
        mask = np.zeros(self.mask_size, np.uint8)
        if self.polyp_png:
            inside = cv2.imdecode(np.frombuffer(self.polyp_png, np.uint8), cv2.IMREAD_UNCHANGED)
            top, left = self.polyp_origin
            mask[top : top + inside.shape[0], left : left + inside.shape[1]] = inside
        return mask

    def render_overlay(self, alpha: float, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """The frame with the class colours blended in at opacity `alpha`, uncertain lesions outlined, as
        `Prediction.render_overlay` draws it (the frame is read again)."""
        mask = self.mask
        overlay = np.array(
            overlay_mask(load_image(self.image_path, max_pixels=max_pixels), mask, self.class_colors, alpha)
        )
        flagged = [_Flag(label) for label in self.uncertain_labels]
        return Image.fromarray(outline_uncertain(overlay, mask, flagged))

    def render_uncertainty(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """`Prediction.render_uncertainty` of the kept prediction (the frame is read again)."""
        levels = cv2.imdecode(np.frombuffer(self.uncertainty_png, np.uint8), cv2.IMREAD_UNCHANGED)
        return uncertainty_view(load_image(self.image_path, max_pixels=max_pixels), levels)


@dataclass(frozen=True)
class _Flag:
    """What `outline_uncertain` reads of a lesion: its number and its flag."""

    label: int
    uncertain: bool = True


def _png(plane: np.ndarray) -> bytes:
    """A uint8 plane as a fast-compressed PNG (level 1: mostly flat masks shrink a hundredfold)."""
    encoded, png = cv2.imencode(".png", plane, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not encoded:
        raise ValueError(f"a {plane.shape} plane could not be PNG-encoded")
    return png.tobytes()


class OutputStore:
    """The app's output files in one folder: unique names, written atomically, and at most
    `max_bytes` in all, however fast requests come (the oldest are deleted first)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = Path(folder), max_bytes
        self._files: collections.deque[tuple[Path, int]] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()  # the app runs two requests at a time

    def save(self, stem: str, suffix: str, write: Callable[[Path], Path], plain_name: bool = False) -> Path:
        """A new file `<stem>-<unique><suffix>`, written by `write(path)` (which writes atomically);
        with `plain_name`, `<unique>/<stem><suffix>`: a download then keeps the plain name."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if plain_name:
            name = str(Path(tempfile.mkdtemp(dir=self.folder, prefix=f"{stem}-")) / f"{stem}{suffix}")
        else:
            handle, name = tempfile.mkstemp(dir=self.folder, prefix=f"{stem}-", suffix=suffix)
            os.close(handle)
        try:
            path = write(Path(name))
        except BaseException:
            self._remove(Path(name))  # no empty placeholder left behind by a failed write
            raise
        with self._lock:
            self._files.append((path, path.stat().st_size))
            self._bytes += self._files[-1][1]
            while self._bytes > self.max_bytes and len(self._files) > 1:
                oldest, size = self._files.popleft()
                self._bytes -= size
                self._remove(oldest)
        return path

    def _remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        if path.parent != self.folder:  # a plain-named file's own folder
            path.parent.rmdir()


LESION_HEADERS = [
    "lesion",
    "class",
    "area (px)",
    "area (% of image)",
    "pixel confidence",
    "P(neoplastic | polyp)",
    "uncertain",
]
LESION_TABLE_HELP = (
    "*pixel confidence*: the mean, over the lesion's pixels, of the probability of the class each pixel "
    "was given (how sure the model is of where the lesion is). *P(neoplastic | polyp)*: the lesion's "
    "chance of being neoplastic given that it is a polyp, from its pixels, calibrated on held-out lesions; "
    "the class is its pixels' majority. *uncertain*: that chance lies in the model's uncertain range (the "
    "lesion is outlined in yellow): treat its class as unknown. Numbers to 3 decimals."
)


def card_figures(metrics) -> str:
    """A model card's figures, (name, value) pairs, as the page shows them: "pooled Dice mean 0.650, ..."."""
    return ", ".join(f"{name.replace('_', ' ')} {value:.3f}" for name, value in metrics)


# Tracks seen in fewer frames than this are fragments (a polyp's piece found for a frame or two): the page's
# table leaves them out and counts them; tracks.csv keeps every track.
MIN_TRACK_FRAMES = 5


def lesion_rows(prediction: Prediction) -> list[list]:
    """One display row per connected polyp region, largest first."""
    return [
        [
            i + 1,
            display_name(lesion.class_name),
            lesion.area_px,
            round(lesion.area_percent, 3),
            round(lesion.confidence, 3),
            round(lesion.neoplastic_probability, 3),
            yes_no(lesion.uncertain),
        ]
        for i, lesion in enumerate(prediction.lesions)
    ]


TRACK_TABLE_HEADERS = [
    "track",
    "class",
    "P(neoplastic | polyp)",
    "uncertain",
    "first seen (s)",
    "last seen (s)",
    "frames seen",
    "largest area (px)",
]


def track_table(tracks: list[list], timeline: list[list], min_frames: int = MIN_TRACK_FRAMES) -> tuple[list[list], int]:
    """The page's track table from tracks.csv rows (`neopolyp_hf.video.pipeline.track_rows`, already
    longest-seen first) and the timeline's rows: display names, times in seconds instead of frames, numbers
    to 3 decimals; tracks seen in fewer than `min_frames` frames left out. Returns (rows, fragments left out)."""
    # A source whose timing is unknown has no times: its tracks show none ("unknown" in the note).
    seconds = {int(row[0]): float(row[1]) if row[1] != "" else None for row in timeline}
    kept = [row for row in tracks if int(row[6]) >= min_frames]
    rows = [
        [
            track_id,
            display_name(name),
            round(float(p), 3),
            uncertain,
            None if seconds[first] is None else round(seconds[first], 3),
            None if seconds[last] is None else round(seconds[last], 3),
            seen,
            area,
        ]
        for track_id, name, p, uncertain, first, last, seen, area in kept
    ]
    return rows, len(tracks) - len(kept)


def timeline_plot_rows(timeline: list[list]) -> list[tuple[float, float, str]]:
    """(time in s, % of the frame, class display name) per frame and polyp class, for the page's plot; where the
    source's timing is unknown, the frame number stands in for the time (the page's note says so)."""

    def at(row: list) -> float:
        return float(row[1]) if row[1] != "" else float(row[0])

    return [(at(row), float(row[2]), display_name(CLASS_NAMES[1])) for row in timeline] + [
        (at(row), float(row[3]), display_name(CLASS_NAMES[2])) for row in timeline
    ]


def class_color_map() -> dict[str, str]:
    """Display name -> "#rrggbb" for the polyp classes: the one colour table, for plots and legends."""
    return {
        display_name(name): "#{:02x}{:02x}{:02x}".format(*color)
        for name, color in zip(CLASS_NAMES[1:], CLASS_COLORS[1:], strict=True)
    }


def legend_html(element_id: str = "legend") -> str:
    """The polyp classes' colour legend as HTML, from the one colour table."""
    items = "".join(
        f'<span style="display:inline-flex;align-items:center;margin-right:1.2em">'
        f'<span style="width:1em;height:1em;background:{color};display:inline-block;'
        f'margin-right:.4em;border:1px solid #888"></span>{name}</span>'
        for name, color in class_color_map().items()
    )
    outline = "#{:02x}{:02x}{:02x}".format(*UNCERTAIN_OUTLINE)
    items += (
        f'<span style="display:inline-flex;align-items:center"><span style="width:1em;height:1em;'
        f'display:inline-block;margin-right:.4em;border:2px solid {outline}"></span>uncertain class (outlined)</span>'
    )
    return f'<div id="{element_id}">{items}</div>'


def uncertainty_scale_html(steps: int = 11) -> str:
    """The uncertainty view's colour scale as an HTML bar, from sure (0) to unsure (1)."""
    colors = uncertainty_colors(np.linspace(0, 255, steps).round().astype(np.uint8)[None])[0]
    stops = ", ".join("#{:02x}{:02x}{:02x}".format(*map(int, c)) for c in colors)
    return (
        '<div id="uncertainty-scale"><div style="height:.9em;border:1px solid #888;'
        f'background:linear-gradient(to right, {stops})"></div>'
        '<div style="display:flex;justify-content:space-between;font-size:.85em">'
        "<span>0: one class near certain</span><span>1: the classes equally likely</span></div></div>"
    )


def held_upload_paths(demo) -> set[str]:
    """The files that queued or running requests hold: every `path` in their payloads (Gradio's FileData)."""
    queue = demo._queue  # Gradio's own queue: what waits in it, and what its workers run
    events = [event for waiting in list(queue.event_queue_per_concurrency_id.values()) for event in list(waiting.queue)]
    events += [event for job in list(queue.active_jobs) if job for event in job]
    paths: set[str] = set()

    def collect(value) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("path"), str):
                paths.add(value["path"])
            for item in value.values():
                collect(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)

    for event in events:
        if event.data is not None:
            collect(event.data.data)
    return paths


def sweep_cache(demo, age: float | None) -> None:
    """Delete the app's cached files older than `age` s (all with None), except those a pending request holds.

    Gradio's own sweep (`delete_cache`) removes an upload by its age alone, so a clip that waits in a long
    queue lost its file before its turn; here the held files are kept as Gradio keeps its examples.
    """
    from gradio.route_utils import delete_files_created_by_app

    keeper = next(iter(demo.blocks.values()))
    held = held_upload_paths(demo) - keeper.keep_in_cache
    keeper.keep_in_cache.update(held)
    try:
        delete_files_created_by_app(demo, age)
    finally:
        keeper.keep_in_cache.difference_update(held)


def start_cache_sweeper(demo, every: float, age: float) -> threading.Thread:
    """Sweep the cache every `every` s in a daemon thread (`sweep_cache`); everything goes at exit."""
    import atexit

    def run() -> None:
        while True:
            time.sleep(every)
            try:
                sweep_cache(demo, age)
            except Exception as error:  # a sweep must never stop the server; the next one tries again
                print(f"cache sweep failed: {type(error).__name__}: {error}", file=sys.stderr)

    atexit.register(lambda: sweep_cache(demo, None))
    thread = threading.Thread(target=run, name="neopolyp-cache-sweep", daemon=True)
    thread.start()
    return thread


def dicom_note(path: str | None) -> str:
    """What a DICOM upload was read as (SOP class, modality, size, frames): never a patient field."""
    if not path or not is_dicom(path):
        return ""
    try:
        return f"Read DICOM: {summarize(read_dataset(path, 'the upload', stop_before_pixels=True)).describe()}. "
    except NeoPolypError:  # unreadable: the segmenter's own error says why
        return ""
