"""The Space's event handlers: one method per page or API event, over one loaded model and its settings.

app.py lays the page out and wires these; the logic lives here so that tests can call a handler, or build
the whole demo, in-process.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from gradio.utils import get_upload_folder
from PIL import Image

from ..atomic import write_atomic
from ..dicom import is_dicom, read_dataset
from ..errors import ImageLoadError, NeoPolypError
from ..masks import save_mask_png
from ..onnx.loading import ModelInfo
from ..synthetic import synthetic_pair
from ..version import installed_version
from ..video.live import LiveSegmenter
from ..video.pipeline import write_video_outputs
from ..video.sources import open_video
from .settings import SpaceSettings
from .space import (
    MIN_TRACK_FRAMES,
    TRACK_TABLE_HEADERS,
    KeptPrediction,
    OutputStore,
    dicom_note,
    frame_sentences,
    lesion_rows,
    percentages_sentences,
    percentages_summary,
    timeline_plot_rows,
    track_table,
)

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv")


class UploadProblem(Exception):
    """A user's upload that cannot be segmented: a message for the user, never a traceback."""


@dataclass(frozen=True)
class Examples:
    """The example frames and clips the page offers, and the folder they are served from."""

    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    label: str = "Examples"
    folder: str | None = None


def page_examples(settings: SpaceSettings, info: ModelInfo, count: int = 3) -> Examples:
    """The operator's own examples (NEOPOLYP_EXAMPLES); else, beside the synthetic demo model only (synthetic
    examples mean nothing to a real one), a few synthetic frames written now: no patient image ships."""
    if settings.examples is not None:
        files = sorted(settings.examples.iterdir())
        return Examples(
            [str(p) for p in files if p.suffix.lower() in IMAGE_SUFFIXES],
            [str(p) for p in files if p.suffix.lower() in VIDEO_SUFFIXES],
            "Examples",
            str(settings.examples),
        )
    if not info.synthetic:
        return Examples()
    folder = Path(tempfile.mkdtemp(prefix="neopolyp-")) / "examples"
    folder.mkdir()
    rng = np.random.default_rng(7)
    images = []
    for i in range(count):
        image, _ = synthetic_pair(rng, 384, 480)
        images.append(str(folder / f"synthetic_{i}.png"))
        Image.fromarray(image).save(images[-1])
    return Examples(images, [], "Synthetic examples", str(folder))


class SpaceHandlers:
    """The events of the page and the API over one served model.

    Every image event runs with preprocess=False: `upload` is Gradio's file payload, handed over untouched,
    so that the package's loader checks the file (format, corruption, size, EXIF, 16-bit) and reports
    problems in its own words. Overlays, uncertainty views and mask files are each a file of their own
    (a PIL image returned to Gradio is cached under a hash of its bytes and rewritten in place, so two
    requests for the same frame could cut each other's download short), inside Gradio's cache so that its
    sweep removes them too, and capped in size however fast requests come.
    """

    def __init__(self, model, info: ModelInfo, settings: SpaceSettings) -> None:
        self.model, self.info, self.settings = model, info, settings
        # The model as the page and the SEG name it: a Hub id, or a local folder's own name, never a path.
        self.model_name = Path(info.source).name if os.path.exists(info.source) else info.source
        self.software_version = installed_version()
        self.outputs = OutputStore(Path(get_upload_folder()) / "neopolyp-outputs", settings.max_output_mb * 1_000_000)

    def save_view(self, image: Image.Image, name: str) -> str:
        """A displayed image as a JPEG file of its own (a few ms, where PNG took ~350 ms)."""
        return str(
            self.outputs.save(
                name, ".jpeg", lambda path: write_atomic(path, lambda tmp: image.save(tmp, "JPEG", quality=90))
            )
        )

    def segment_image(self, upload: dict | None, tta: bool, opacity: float):
        """One upload: the overlay file, the percentages, the lesion rows and what the session keeps."""
        if not upload or not upload.get("path"):
            raise UploadProblem("Upload an image first.")
        image_path = upload["path"]
        try:
            prediction = self.model.predict(image_path, tta=tta, max_pixels=self.settings.max_pixels)
        except (NeoPolypError, ValueError) as error:
            message = str(error).replace(image_path, Path(image_path).name)  # never the server's path
            raise UploadProblem(f"Cannot segment this upload: {message}") from error
        return (
            self.save_view(prediction.render_overlay(opacity), "neopolyp_overlay"),
            percentages_summary(prediction),
            lesion_rows(prediction),
            KeptPrediction.of(prediction, image_path),  # small: every API call is a session of its own
        )

    def predict(self, upload: dict | None, tta: bool, opacity: float):
        """The /predict API: overlay, percentages, lesion table; a bad upload is an error naming the problem."""
        try:
            return self.segment_image(upload, tta, opacity)
        except UploadProblem as problem:
            raise gr.Error(str(problem), print_exception=False) from None

    def predict_page(self, upload: dict | None, tta: bool, opacity: float, uncertainty_open: bool):
        """The Segment button. Every output belongs to this request: a failed one clears them all (no earlier
        frame's numbers or mask stay) and says why. The uncertainty view is rendered only when its tab is open."""
        try:
            overlay, percentages, rows, kept = self.segment_image(upload, tta, opacity)
        except UploadProblem as problem:
            gr.Warning(str(problem))
            return None, None, [], None, str(problem), None, gr.File(value=None, visible=False)
        uncertainty = self.show_uncertainty(kept) if uncertainty_open else None
        sentences = dicom_note(upload.get("path")) + percentages_sentences(percentages)
        return overlay, percentages, rows, kept, sentences, uncertainty, gr.File(value=None, visible=False)

    def _from_kept(self, kept: KeptPrediction, render) -> str:
        try:
            return render(kept)
        except ImageLoadError as error:  # the upload has aged out of the cache
            raise gr.Error("This frame has expired from the server; upload it again.", print_exception=False) from error

    def rerender(self, kept: KeptPrediction | None, opacity: float):
        """Re-blend the last prediction at a new opacity, without running the model again."""
        if kept is None:
            return gr.skip()
        max_pixels = self.settings.max_pixels
        return self._from_kept(
            kept, lambda k: self.save_view(k.render_overlay(opacity, max_pixels), "neopolyp_overlay")
        )

    def show_uncertainty(self, kept: KeptPrediction | None):
        """The last prediction's uncertainty view, rendered when its tab is opened."""
        if kept is None:
            return None
        max_pixels = self.settings.max_pixels
        return self._from_kept(kept, lambda k: self.save_view(k.render_uncertainty(max_pixels), "neopolyp_uncertainty"))

    def open_uncertainty(self, kept: KeptPrediction | None):
        """The Uncertainty tab selected: remember that it is open, and render the view."""
        return True, self.show_uncertainty(kept)

    def mask_file(self, kept: KeptPrediction | None):
        """The last prediction's colour mask as a lossless PNG, written only when asked for."""
        if kept is None:
            gr.Warning("Segment an image first (a result is kept for a few minutes).")
            return gr.File(value=None, visible=False)
        path = self.outputs.save(
            "neopolyp_mask", ".png", lambda p: save_mask_png(kept.mask, p, kept.class_colors), plain_name=True
        )
        return gr.File(value=str(path), visible=True)

    def _write_seg(self, kept: KeptPrediction) -> Path:
        """The SEG of a kept prediction over its DICOM source, as a file of its own.

        Raises:
            gr.Error: the source is no DICOM still, or highdicom cannot make a SEG of it (the reason given).
        """
        from ..dicom_seg.writer import build_seg

        try:
            source = read_dataset(kept.image_path, "the upload")
            seg = build_seg(
                source,
                kept.mask,
                self.model_name,
                self.info.commit or "",
                self.software_version,
                self.info.weights_sha256,
            )
        except (NeoPolypError, ImportError) as error:
            raise gr.Error(f"No DICOM SEG: {error}", print_exception=False) from error
        return self.outputs.save("neopolyp_seg", ".dcm", lambda p: write_atomic(p, lambda tmp: seg.save_as(tmp)))

    def seg_file(self, kept: KeptPrediction | None):
        """The page's SEG button: the last prediction as a DICOM SEG over its DICOM source (two segments)."""
        if kept is None or not is_dicom(kept.image_path):
            gr.Warning("A DICOM SEG is made over a DICOM still: segment a DICOM upload first.")
            return gr.File(value=None, visible=False)
        return gr.File(value=str(self._write_seg(kept)), visible=True)

    def predict_seg(self, upload: dict | None) -> str:
        """The /predict_seg API: a DICOM still in, its DICOM SEG file out (the file itself, as the API promises);
        anything else is an error naming the problem."""
        if upload and upload.get("path") and not is_dicom(upload["path"]):
            raise gr.Error("A DICOM SEG is made over a DICOM still: this upload is not DICOM.", print_exception=False)
        try:
            *_, kept = self.segment_image(upload, False, 0.5)
        except UploadProblem as problem:
            raise gr.Error(str(problem), print_exception=False) from None
        return str(self._write_seg(kept))

    def segment_button(self, image: dict | None, dicom: dict | None, tta: bool, opacity: float, open_: bool):
        """The Segment button: the frame uploaded as an image, else the DICOM still uploaded beside it (uploading
        one clears the other, so the button segments what is on the page)."""
        return self.predict_page(image if image and image.get("path") else dicom, tta, opacity, open_)

    def segment_clip(self, upload, progress):
        """A clip with lesion tracking: the overlaid MP4, the timeline plot's rows, the track table and a note.
        Length and frame size are checked before any frame is decoded."""
        if isinstance(upload, dict):
            upload = (upload.get("video") or upload).get("path")
        if not upload:
            raise UploadProblem("Upload a video first.")
        path, settings, runs = str(upload), self.settings, []

        def write(out: Path) -> Path:
            runs.append(
                write_video_outputs(
                    self.model,
                    source,  # opened below, before this is called
                    output_video=out,
                    max_pixels=settings.max_pixels,
                    max_seconds=settings.max_video_seconds,
                    progress=lambda done, total: progress((done, total), unit="frames"),
                )
            )
            return runs[-1].files["video"]

        try:
            # Opened once: its size, length and timing checked before any frame, a DICOM's stream copied out once.
            with open_video(path, settings.max_pixels, settings.max_video_seconds) as source:
                info = source.info
                clip = self.outputs.save("neopolyp_video", ".mp4", write)
        except (NeoPolypError, ValueError) as error:
            raise UploadProblem(f"Cannot segment this video: {str(error).replace(path, Path(path).name)}") from error
        run = runs[-1]
        timeline = pd.DataFrame(
            timeline_plot_rows(run.timeline), columns=["time (s)", "polyp pixels (% of frame)", "class"]
        )
        hdr = f"HDR ({info.hdr}) clip: tone-mapped to SDR for the model and the overlay. " if info.hdr else ""
        if info.timing == "unknown":
            hdr += "Frame times unknown (nothing in the file times its frames): the plot counts frames. "
        rows, fragments = track_table(run.tracks, run.timeline)
        left_out = (
            f"{fragments} fragment track(s) seen in fewer than {MIN_TRACK_FRAMES} frames are not listed "
            "(tracks.csv of the CLI keeps every track)."
            if fragments
            else ""
        )
        tracks = pd.DataFrame(rows, columns=TRACK_TABLE_HEADERS)
        return str(clip), timeline, tracks, dicom_note(path) + hdr + left_out

    def predict_video(self, upload, progress=gr.Progress()):
        """The /predict_video API; a bad clip is an error naming the problem."""
        try:
            return self.segment_clip(upload, progress)[:3]
        except UploadProblem as problem:
            raise gr.Error(str(problem), print_exception=False) from None

    def predict_video_page(self, upload, progress=gr.Progress()):
        """The clip button: a failed request clears the outputs and says why."""
        try:
            return self.segment_clip(upload, progress)
        except UploadProblem as problem:
            gr.Warning(str(problem))
            return None, None, None, str(problem)

    def camera_frame(self, frame: np.ndarray | None, live: LiveSegmenter | None):
        """One webcam frame: its overlay with tracking and its percentages, or no update while the model is
        busy (the newest frame wins, so lag never grows)."""
        if frame is None:
            return gr.skip(), gr.skip(), live
        live = live or LiveSegmenter(self.model)
        result = live.segment(frame)
        if result is None:
            return gr.skip(), gr.skip(), live
        overlay, _, percentages = result
        return overlay, frame_sentences(percentages), live
