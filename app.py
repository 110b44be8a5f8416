"""NeoPolyp Space: colon-polyp segmentation demo (Gradio). Research software, not for clinical use.

Environment (all optional): NEOPOLYP_MODEL (model folder, Hub repo id or .onnx file),
NEOPOLYP_REVISION, NEOPOLYP_BACKEND (auto|torch|onnx; auto: ONNX Runtime on a CPU, torch on CUDA),
NEOPOLYP_PRECISION (fp32|bf16|int8), NEOPOLYP_MAX_PIXELS, NEOPOLYP_MAX_FILE_SIZE (20MB; bytes or a unit),
NEOPOLYP_CACHE_SECONDS (uploads and outputs older than this are deleted; 300), NEOPOLYP_QUEUE_SIZE
(requests waiting beyond it get "queue full, try again"; 16), NEOPOLYP_MAX_OUTPUT_MB (the overlays,
uncertainty views and mask PNGs kept for download, oldest deleted first; 64), NEOPOLYP_MAX_SESSIONS
(sessions kept in memory, least recently used dropped first; 200), NEOPOLYP_MAX_VIDEO_SECONDS
(longer clips are refused before any work; 60), NEOPOLYP_EXAMPLES (a folder of the operator's own
example frames and clips; without it, synthetic examples are shown with the synthetic demo model
only), and Gradio's GRADIO_SERVER_NAME / _PORT.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from gradio.utils import get_upload_folder
from PIL import Image

from neopolyp_hf import ImageLoadError, ModelSourceError
from neopolyp_hf.atomic import write_atomic
from neopolyp_hf.dicom import is_dicom, read_dataset
from neopolyp_hf.errors import ConfigError, NeoPolypError
from neopolyp_hf.masks import save_mask_png
from neopolyp_hf.onnx.loading import load_segmenter
from neopolyp_hf.preprocessing import DEFAULT_MAX_PIXELS
from neopolyp_hf.serving.space import (
    LESION_HEADERS,
    TRACK_TABLE_HEADERS,
    KeptPrediction,
    OutputStore,
    class_color_map,
    dicom_note,
    frame_sentences,
    legend_html,
    lesion_rows,
    limit_malloc_arenas,
    parse_size,
    percentages_sentences,
    percentages_summary,
    start_cache_sweeper,
    timeline_plot_rows,
    track_table,
    uncertainty_scale_html,
)
from neopolyp_hf.synthetic import synthetic_pair
from neopolyp_hf.version import installed_version
from neopolyp_hf.video.io import probe_video
from neopolyp_hf.video.live import LiveSegmenter
from neopolyp_hf.video.pipeline import write_video_outputs

limit_malloc_arenas()  # before the server's threads start: bounded memory under load

DEFAULT_MODEL = "neopolyp/neopolyp"
MODEL_SOURCE = os.environ.get("NEOPOLYP_MODEL", DEFAULT_MODEL)


def setting(variable: str, default, unit: str, parse=int):
    """A number from the environment; a value that is not one stops the start, naming the variable and unit."""
    value = os.environ.get(variable)
    if value is None:
        return default
    try:
        number = parse(value)
    except (ValueError, OverflowError):
        number = None
    if number is None or not math.isfinite(number) or number <= 0:  # nan and inf would switch a limit off
        sys.exit(f"NeoPolyp cannot start: {variable}={value!r} must be a positive number of {unit}")
    return number


try:
    MAX_FILE_SIZE = parse_size("NEOPOLYP_MAX_FILE_SIZE", os.environ.get("NEOPOLYP_MAX_FILE_SIZE", "20MB"))
except ConfigError as error:
    sys.exit(f"NeoPolyp cannot start: {error}")
MAX_PIXELS = setting("NEOPOLYP_MAX_PIXELS", DEFAULT_MAX_PIXELS, "pixels (width x height)")
CACHE_SECONDS = setting("NEOPOLYP_CACHE_SECONDS", 300, "seconds")
QUEUE_SIZE = setting("NEOPOLYP_QUEUE_SIZE", 16, "requests")
MAX_OUTPUT_MB = setting("NEOPOLYP_MAX_OUTPUT_MB", 64, "megabytes (MB)")
MAX_SESSIONS = setting("NEOPOLYP_MAX_SESSIONS", 200, "sessions")
MAX_VIDEO_SECONDS = setting("NEOPOLYP_MAX_VIDEO_SECONDS", 60.0, "seconds", parse=float)

try:
    MODEL, INFO = load_segmenter(
        MODEL_SOURCE,
        os.environ.get("NEOPOLYP_REVISION") or None,
        backend=os.environ.get("NEOPOLYP_BACKEND", "auto"),
        precision=os.environ.get("NEOPOLYP_PRECISION", "fp32"),
    )
except ModelSourceError as error:
    sys.exit(f"NeoPolyp cannot start: {error}")

# The model as the page and the SEG name it: a Hub id, or a local folder's own name (never the server's path).
MODEL_NAME = INFO.source if not os.path.exists(INFO.source) else Path(INFO.source).name
SOFTWARE_VERSION = installed_version()

try:  # ZeroGPU Spaces hand out the GPU per call.
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn):
        return fn


EXAMPLES_DIR = Path(tempfile.mkdtemp(prefix="neopolyp-")) / "examples"
# Overlays, uncertainty views and mask PNGs: each a file of its own (a PIL image returned to Gradio
# is cached under a hash of its bytes and rewritten in place, so two requests for the same frame
# could cut each other's download short), inside Gradio's cache so that its sweep removes them
# too, and capped in size however fast requests come.
OUTPUTS = OutputStore(Path(get_upload_folder()) / "neopolyp-outputs", MAX_OUTPUT_MB * 1_000_000)


def save_view(image: Image.Image, name: str) -> str:
    """A displayed image as a JPEG file of its own."""

    def write(path: Path) -> Path:
        return write_atomic(path, lambda tmp: image.save(tmp, format="JPEG", quality=90))

    return str(OUTPUTS.save(name, ".jpeg", write))


IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv")
OPERATOR_EXAMPLES = os.environ.get("NEOPOLYP_EXAMPLES")


def operator_examples(suffixes: tuple[str, ...]) -> list[str]:
    """The operator's own examples (NEOPOLYP_EXAMPLES) with these file suffixes."""
    folder = Path(OPERATOR_EXAMPLES)
    if not folder.is_dir():
        sys.exit(f"NeoPolyp cannot start: NEOPOLYP_EXAMPLES '{folder}' is not a folder")
    return [str(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes]


def make_examples(count: int = 3) -> list[str]:
    """A few synthetic frames, made at start-up: no real patient image ships with the app."""
    EXAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):
        image, _ = synthetic_pair(rng, 384, 480)
        paths.append(str(EXAMPLES_DIR / f"synthetic_{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


# Synthetic examples mean something only beside the synthetic demo model; an operator may show their own.
if OPERATOR_EXAMPLES:
    IMAGE_EXAMPLES, VIDEO_EXAMPLES = operator_examples(IMAGE_SUFFIXES), operator_examples(VIDEO_SUFFIXES)
    EXAMPLES_LABEL = "Examples"
elif INFO.synthetic:
    IMAGE_EXAMPLES, VIDEO_EXAMPLES, EXAMPLES_LABEL = make_examples(), [], "Synthetic examples"
else:
    IMAGE_EXAMPLES, VIDEO_EXAMPLES, EXAMPLES_LABEL = [], [], "Examples"


class UploadProblem(Exception):
    """A user's upload that cannot be segmented: a message for the user, never a traceback."""


def segment_image(upload: dict | None, tta: bool, opacity: float):
    """Segment one upload: the overlay file, the percentages, the lesion rows and what the session keeps.

    The events run with preprocess=False, so `upload` is Gradio's file payload and the file is handed
    over untouched: the package's loader checks it (format, corruption, size, EXIF, 16-bit) and reports
    problems in its own words.
    """
    if not upload or not upload.get("path"):
        raise UploadProblem("Upload an image first.")
    image_path = upload["path"]
    try:
        prediction = MODEL.predict(image_path, tta=tta, max_pixels=MAX_PIXELS)
    except (NeoPolypError, ValueError) as error:
        # Name the upload by its file name, not the server's temporary path.
        message = str(error).replace(image_path, Path(image_path).name)
        raise UploadProblem(f"Cannot segment this upload: {message}") from error
    # The overlay goes out as JPEG: a few ms, where PNG took ~350 ms.
    return (
        save_view(prediction.render_overlay(opacity), "neopolyp_overlay"),
        percentages_summary(prediction),
        lesion_rows(prediction),
        KeptPrediction.of(prediction, image_path),  # small: every API call is a session of its own
    )


@gpu
def predict(upload: dict | None, tta: bool, opacity: float):
    """The /predict API: overlay, percentages, lesion table; a bad upload is an error naming the problem."""
    try:
        return segment_image(upload, tta, opacity)
    except UploadProblem as problem:
        raise gr.Error(str(problem), print_exception=False) from None


@gpu
def predict_page(upload: dict | None, tta: bool, opacity: float, uncertainty_open: bool):
    """The page's Segment button. Every output belongs to this request: a failed one clears them all
    (no earlier frame's numbers or mask stay on the page) and says why in a notice and in the summary.
    The uncertainty view is rendered only when its tab is open: most requests never show it."""
    try:
        overlay, percentages, rows, kept = segment_image(upload, tta, opacity)
    except UploadProblem as problem:
        gr.Warning(str(problem))
        return None, None, [], None, str(problem), None, gr.File(value=None, visible=False)
    uncertainty = show_uncertainty(kept) if uncertainty_open else None
    sentences = dicom_note(upload.get("path")) + percentages_sentences(percentages)
    return overlay, percentages, rows, kept, sentences, uncertainty, gr.File(value=None, visible=False)


def _from_kept(kept: KeptPrediction, render) -> str:
    try:
        return render(kept)
    except ImageLoadError as error:  # the upload has aged out of the cache
        raise gr.Error("This frame has expired from the server; upload it again.", print_exception=False) from error


def rerender(kept: KeptPrediction | None, opacity: float):
    """Re-blend the last prediction at a new opacity, without running the model again."""
    if kept is None:
        return gr.skip()
    return _from_kept(kept, lambda k: save_view(k.render_overlay(opacity, MAX_PIXELS), "neopolyp_overlay"))


def show_uncertainty(kept: KeptPrediction | None):
    """The last prediction's uncertainty view, rendered when its tab is opened."""
    if kept is None:
        return None
    return _from_kept(kept, lambda k: save_view(k.render_uncertainty(MAX_PIXELS), "neopolyp_uncertainty"))


def mask_file(kept: KeptPrediction | None):
    """The last prediction's colour mask as a lossless PNG, written only when asked for."""
    if kept is None:
        gr.Warning("Segment an image first (a result is kept for a few minutes).")
        return gr.File(value=None, visible=False)
    path = OUTPUTS.save(
        "neopolyp_mask", ".png", lambda path: save_mask_png(kept.mask, path, kept.class_colors), plain_name=True
    )
    return gr.File(value=str(path), visible=True)


def seg_file(kept: KeptPrediction | None):
    """The last prediction as a DICOM SEG over its DICOM source (two segments), written only when asked for."""
    from neopolyp_hf.dicom_seg.writer import build_seg

    if kept is None or not is_dicom(kept.image_path):
        gr.Warning("A DICOM SEG is made over a DICOM still: segment a .dcm upload first.")
        return gr.File(value=None, visible=False)
    try:
        source = read_dataset(kept.image_path, "the upload")
        seg = build_seg(source, kept.mask, MODEL_NAME, INFO.revision, SOFTWARE_VERSION)
    except (NeoPolypError, ImportError) as error:
        raise gr.Error(f"No DICOM SEG: {error}", print_exception=False) from error
    path = OUTPUTS.save("neopolyp_seg", ".dcm", lambda path: write_atomic(path, lambda tmp: seg.save_as(tmp)))
    return gr.File(value=str(path), visible=True)


@gpu
def predict_seg(upload: dict | None):
    """The /predict_seg API: a DICOM still in, its DICOM SEG out; anything else is an error naming the problem."""
    if upload and upload.get("path") and not is_dicom(upload["path"]):
        raise gr.Error(
            "A DICOM SEG is made over a DICOM still (.dcm): this upload is not DICOM.", print_exception=False
        )
    try:
        *_, kept = segment_image(upload, False, 0.5)
    except UploadProblem as problem:
        raise gr.Error(str(problem), print_exception=False) from None
    return seg_file(kept)


def segment_clip(upload, progress):
    """Segment a clip with lesion tracking: the overlaid MP4, the timeline plot's rows and the track table.
    Length and frame size are checked before any frame is decoded."""
    if isinstance(upload, dict):
        upload = (upload.get("video") or upload).get("path")
    if not upload:
        raise UploadProblem("Upload a video first.")
    path = str(upload)
    runs = []

    def write(out: Path) -> Path:
        runs.append(
            write_video_outputs(
                MODEL,
                path,
                output_video=out,
                max_pixels=MAX_PIXELS,
                max_seconds=MAX_VIDEO_SECONDS,
                progress=lambda done, total: progress((done, total), unit="frames"),
            )
        )
        return runs[-1].files["video"]

    try:
        info = probe_video(path, MAX_PIXELS, MAX_VIDEO_SECONDS)
        clip = OUTPUTS.save("neopolyp_video", ".mp4", write)
    except (NeoPolypError, ValueError) as error:
        raise UploadProblem(f"Cannot segment this video: {str(error).replace(path, Path(path).name)}") from error
    run = runs[-1]
    timeline = pd.DataFrame(
        timeline_plot_rows(run.timeline), columns=["time (s)", "polyp pixels (% of frame)", "class"]
    )
    notes = dicom_note(path) + (
        f"HDR ({info.hdr}) clip: tone-mapped to SDR for the model and the overlay." if info.hdr else ""
    )
    tracks = pd.DataFrame(track_table(run.tracks, run.timeline), columns=TRACK_TABLE_HEADERS)
    return str(clip), timeline, tracks, notes


@gpu
def predict_video(upload, progress=gr.Progress()):
    """The /predict_video API; a bad clip is an error naming the problem."""
    try:
        return segment_clip(upload, progress)[:3]
    except UploadProblem as problem:
        raise gr.Error(str(problem), print_exception=False) from None


@gpu
def predict_video_page(upload, progress=gr.Progress()):
    """The page's clip button: a failed request clears the outputs and says why."""
    try:
        return segment_clip(upload, progress)
    except UploadProblem as problem:
        gr.Warning(str(problem))
        return None, None, None, str(problem)


@gpu
def camera_frame(frame: np.ndarray | None, live: LiveSegmenter | None):
    """One webcam frame: its overlay with tracking and its percentages, or no update where the model is
    still busy."""
    if frame is None:
        return gr.skip(), gr.skip(), live
    live = live or LiveSegmenter(MODEL)
    result = live.segment(frame)
    if result is None:  # dropped: the newest frame wins, so lag never grows
        return gr.skip(), gr.skip(), live
    overlay, _, percentages = result
    return overlay, frame_sentences(percentages), live


NOTICE = (
    "**Research software: not a medical device and not for clinical use.** Do not use it to diagnose, "
    "treat or triage anyone."
)
SYNTHETIC_NOTICE = (
    "**Demo model trained on synthetic images only.** It has never seen a real colonoscopy frame: its "
    "output on one means nothing. Set `NEOPOLYP_MODEL` to a trained model to serve that instead."
)

UNCERTAINTY_HELP = (
    "Brightness is the normalised entropy of the class probabilities: dark where one class is near "
    "certain, bright where classes are close (with flip TTA, also where the flips disagree). A lesion is "
    "flagged *uncertain* when its mean P(neoplastic | polyp) lies in the model's `uncertain_range` "
    f"{MODEL.config['uncertain_range']}."
)

# No delete_cache: Gradio's sweep deletes uploads by age alone, queued ones too; start_cache_sweeper keeps what a
# pending request holds.
with gr.Blocks(title="NeoPolyp: polyp segmentation") as demo:
    gr.Markdown("# NeoPolyp\nSegments colonoscopy frames into neoplastic and non-neoplastic polyp pixels.")
    gr.Markdown(NOTICE, elem_id="notice")
    if INFO.synthetic:
        gr.Markdown(SYNTHETIC_NOTICE, elem_id="synthetic-notice")
    kept_prediction = gr.State(None, time_to_live=CACHE_SECONDS)
    uncertainty_open = gr.State(False)
    with gr.Tab("Image"):
        with gr.Row():
            with gr.Column():
                image_input = gr.Image(label="Colonoscopy frame", type="filepath", sources=["upload"], elem_id="input")
                dicom_input = gr.File(label="... or a DICOM still (.dcm)", file_types=[".dcm"], elem_id="dicom-input")
                tta_input = gr.Checkbox(label="Flip test-time augmentation (3x slower, steadier)", value=False)
                opacity_input = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
                run_button = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Column():
                with gr.Tabs():
                    with gr.Tab("Segmentation") as segmentation_tab:
                        overlay_output = gr.Image(label="Segmentation overlay", type="filepath", elem_id="overlay")
                        gr.HTML(legend_html())
                    with gr.Tab("Uncertainty") as uncertainty_tab:
                        uncertainty_output = gr.Image(
                            label="Uncertainty (bright: the model is unsure)",
                            type="filepath",
                            elem_id="uncertainty",
                        )
                        gr.HTML(uncertainty_scale_html())
                        gr.Markdown(UNCERTAINTY_HELP)
                summary_output = gr.Markdown(elem_id="summary")
                # The API's JSON of the same numbers; people read the sentences above.
                percentages_output = gr.JSON(label="Polyp pixels (%)", elem_id="percentages", visible=False)
                mask_button = gr.Button("Make the mask PNG (lossless)", elem_id="make-mask")
                mask_output = gr.File(label="Mask (PNG)", visible=False, elem_id="mask-file")
                seg_button = gr.Button("Make the DICOM SEG (of a .dcm still)", elem_id="make-seg")
                seg_output = gr.File(label="DICOM SEG", visible=False, elem_id="seg-file")
        lesions_output = gr.Dataframe(
            headers=LESION_HEADERS,
            label=f"Lesions (connected polyp regions of at least {MODEL.config.get('min_lesion_area', 0)} px)",
            elem_id="lesions",
            interactive=False,
        )
        if IMAGE_EXAMPLES:
            gr.Examples(IMAGE_EXAMPLES, inputs=image_input, label=EXAMPLES_LABEL)
    with gr.Tab("Video"):
        gr.Markdown(
            f"Upload a clip of up to {MAX_VIDEO_SECONDS:g} s. Lesions are tracked across frames, and each "
            "keeps one class over its track, decided from all the frames it was seen in."
        )
        with gr.Row():
            with gr.Column():
                video_input = gr.Video(label="Colonoscopy clip", sources=["upload"], elem_id="video-input")
                dicom_video_input = gr.File(
                    label="... or a DICOM video (.dcm)", file_types=[".dcm"], elem_id="dicom-video-input"
                )
                video_button = gr.Button("Segment the clip", variant="primary", elem_id="run-video")
            with gr.Column():
                video_output = gr.Video(label="Overlaid clip", elem_id="video-output")
                video_note = gr.Markdown(elem_id="video-note")
        timeline_output = gr.LinePlot(
            x="time (s)",
            y="polyp pixels (% of frame)",
            color="class",
            color_map=class_color_map(),  # the overlay's colours, not the plot library's
            label="Polyp pixels over time",
            elem_id="timeline",
        )
        tracks_output = gr.Dataframe(
            headers=TRACK_TABLE_HEADERS,
            label="Tracks (longest seen first)",
            elem_id="tracks",
            interactive=False,
        )
        if VIDEO_EXAMPLES:
            gr.Examples(VIDEO_EXAMPLES, inputs=video_input, label=EXAMPLES_LABEL)
    with gr.Tab("Camera"):
        gr.Markdown(
            "Stream your camera: each frame comes back overlaid, with lesions tracked. Frames that arrive "
            "while the model is busy are dropped, so the picture never lags further behind."
        )
        live_state = gr.State(None, time_to_live=CACHE_SECONDS)
        with gr.Row():
            camera_input = gr.Image(
                label="Camera",
                sources=["webcam"],
                type="numpy",
                webcam_options=gr.WebcamOptions(mirror=False),  # an endoscope is never mirrored
                elem_id="camera-input",
            )
            with gr.Column():
                camera_output = gr.Image(label="Live overlay", elem_id="camera-output")
                gr.HTML(legend_html("camera-legend"))
                camera_summary = gr.Markdown(elem_id="camera-summary")
    gr.Markdown(
        f"Model: `{MODEL_NAME}` · revision: `{INFO.revision}` · backend: `{INFO.backend}` on `{INFO.device}` "
        f"({INFO.precision}) · input {MODEL.config['input_size']} px, "
        f"trained on: {', '.join(INFO.datasets) or 'unknown'}",
        elem_id="model-info",
    )

    # The page and the API are two events: the page clears a failed request's outputs and shows a notice,
    # the API answers with an error (a hidden button carries its endpoint).
    image_outputs = [
        overlay_output,
        percentages_output,
        lesions_output,
        kept_prediction,
        summary_output,
        uncertainty_output,
        mask_output,
    ]
    for image_source, trigger in ((image_input, run_button.click), (dicom_input, dicom_input.upload)):
        trigger(
            predict_page,
            inputs=[image_source, tta_input, opacity_input, uncertainty_open],
            outputs=image_outputs,
            preprocess=False,
            api_visibility="private",
        )
    api_image_button = gr.Button(visible=False)
    api_image_button.click(
        predict,
        inputs=[image_input, tta_input, opacity_input],
        outputs=[overlay_output, percentages_output, lesions_output, kept_prediction],
        api_name="predict",
        preprocess=False,
    )
    uncertainty_tab.select(
        lambda kept: (True, show_uncertainty(kept)),
        inputs=kept_prediction,
        outputs=[uncertainty_open, uncertainty_output],
        api_visibility="private",
    )
    segmentation_tab.select(lambda: False, outputs=uncertainty_open, api_visibility="private")
    for video_source, trigger in ((video_input, video_button.click), (dicom_video_input, dicom_video_input.upload)):
        trigger(
            predict_video_page,
            inputs=video_source,
            outputs=[video_output, timeline_output, tracks_output, video_note],
            preprocess=False,
            api_visibility="private",
        )
    api_video_button = gr.Button(visible=False)
    api_video_button.click(
        predict_video,
        inputs=video_input,
        outputs=[video_output, timeline_output, tracks_output],
        api_name="predict_video",
        preprocess=False,
    )
    camera_input.stream(
        camera_frame,
        inputs=[camera_input, live_state],
        outputs=[camera_output, camera_summary, live_state],
        stream_every=0.1,
        time_limit=300,
        concurrency_limit=2,
        trigger_mode="always_last",
        api_visibility="private",
    )
    mask_button.click(
        mask_file, inputs=kept_prediction, outputs=mask_output, api_name="mask_file", api_visibility="private"
    )
    seg_button.click(seg_file, inputs=kept_prediction, outputs=seg_output, api_visibility="private")
    api_seg_button = gr.Button(visible=False)
    api_seg_button.click(predict_seg, inputs=dicom_input, outputs=seg_output, api_name="predict_seg", preprocess=False)
    opacity_input.release(
        rerender, inputs=[kept_prediction, opacity_input], outputs=overlay_output, api_visibility="private"
    )

# Two requests at a time: enough to overlap decoding with inference, without thrashing a small CPU.
# A bounded queue: beyond it a request is refused at once ("queue full, try again") instead of waiting.
demo.queue(default_concurrency_limit=2, max_size=QUEUE_SIZE)

if __name__ == "__main__":
    start_cache_sweeper(demo, every=max(1, CACHE_SECONDS // 2), age=CACHE_SECONDS)
    demo.launch(
        ssr_mode=False,
        allowed_paths=[str(EXAMPLES_DIR)] + ([OPERATOR_EXAMPLES] if OPERATOR_EXAMPLES else []),
        max_file_size=MAX_FILE_SIZE,
        # Gradio keeps every session (a copy of the page's config, ~50 kB, plus its state) until
        # 10,000 of them, and every API call is a session of its own: memory grew with each request.
        state_session_capacity=MAX_SESSIONS,
    )
