"""NeoPolyp Space: colon-polyp segmentation demo (Gradio). Research software, not for clinical use.

Environment (all optional): NEOPOLYP_MODEL (model folder, Hub repo id or .onnx file),
NEOPOLYP_REVISION, NEOPOLYP_BACKEND (auto|torch|onnx; auto: ONNX Runtime on a CPU, torch on CUDA),
NEOPOLYP_PRECISION (fp32|bf16|int8), NEOPOLYP_MAX_PIXELS, NEOPOLYP_MAX_FILE_SIZE (bytes, 20 MB),
NEOPOLYP_CACHE_SECONDS (uploads and outputs older than this are deleted; 300), NEOPOLYP_QUEUE_SIZE
(requests waiting beyond it get "queue full, try again"; 16), NEOPOLYP_MAX_OUTPUT_MB (the overlays,
uncertainty views and mask PNGs kept for download, oldest deleted first; 64), NEOPOLYP_MAX_SESSIONS
(sessions kept in memory, least recently used dropped first; 200), NEOPOLYP_MAX_VIDEO_SECONDS
(longer clips are refused before any work; 60), NEOPOLYP_EXAMPLES (a folder of the operator's own
example frames and clips; without it, synthetic examples are shown with the synthetic demo model
only), and Gradio's GRADIO_SERVER_NAME / _PORT.
"""

from __future__ import annotations

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
from neopolyp_hf.errors import VideoLoadError
from neopolyp_hf.masks import save_mask_png
from neopolyp_hf.preprocessing import DEFAULT_MAX_PIXELS
from neopolyp_hf.serving import (
    LESION_HEADERS,
    KeptPrediction,
    OutputStore,
    lesion_rows,
    limit_malloc_arenas,
    load_segmenter,
    percentages_sentences,
    percentages_summary,
)
from neopolyp_hf.synthetic import synthetic_pair
from neopolyp_hf.video.io import probe_video
from neopolyp_hf.video.live import LiveSegmenter
from neopolyp_hf.video.pipeline import TRACK_HEADERS, write_video_outputs

limit_malloc_arenas()  # before the server's threads start: bounded memory under load

DEFAULT_MODEL = "neopolyp/neopolyp"
MODEL_SOURCE = os.environ.get("NEOPOLYP_MODEL", DEFAULT_MODEL)
try:
    MAX_PIXELS = int(os.environ.get("NEOPOLYP_MAX_PIXELS", DEFAULT_MAX_PIXELS))
    MAX_FILE_SIZE = int(os.environ.get("NEOPOLYP_MAX_FILE_SIZE", 20_000_000))
    CACHE_SECONDS = int(os.environ.get("NEOPOLYP_CACHE_SECONDS", 300))
    QUEUE_SIZE = int(os.environ.get("NEOPOLYP_QUEUE_SIZE", 16))
    MAX_OUTPUT_MB = int(os.environ.get("NEOPOLYP_MAX_OUTPUT_MB", 64))
    MAX_SESSIONS = int(os.environ.get("NEOPOLYP_MAX_SESSIONS", 200))
    MAX_VIDEO_SECONDS = float(os.environ.get("NEOPOLYP_MAX_VIDEO_SECONDS", 60))
except ValueError as error:
    sys.exit(f"NeoPolyp cannot start: a NEOPOLYP_* size or time setting is not a whole number: {error}")

try:
    MODEL, INFO = load_segmenter(
        MODEL_SOURCE,
        os.environ.get("NEOPOLYP_REVISION") or None,
        backend=os.environ.get("NEOPOLYP_BACKEND", "auto"),
        precision=os.environ.get("NEOPOLYP_PRECISION", "fp32"),
    )
except ModelSourceError as error:
    sys.exit(f"NeoPolyp cannot start: {error}")

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


@gpu
def predict(upload: dict | None, tta: bool, opacity: float):
    """Segment one upload: overlay, percentages and lesion table (the /predict API).

    The event runs with preprocess=False, so `upload` is Gradio's file payload and the file is
    handed over untouched: the package's loader checks it (format, corruption, size, EXIF,
    16-bit) and reports problems in its own words.
    """
    if not upload or not upload.get("path"):
        raise gr.Error("Upload an image first.")
    image_path = upload["path"]
    try:
        prediction = MODEL.predict(image_path, tta=tta, max_pixels=MAX_PIXELS)
    except (ImageLoadError, ValueError) as error:
        # Name the upload by its file name, not the server's temporary path.
        message = str(error).replace(image_path, Path(image_path).name)
        raise gr.Error(f"Cannot segment this upload: {message}") from error
    # The overlay goes out as JPEG: a few ms, where PNG took ~350 ms. The uncertainty view is
    # rendered only when its tab is open: most requests never show it.
    return (
        save_view(prediction.render_overlay(opacity), "neopolyp_overlay"),
        percentages_summary(prediction),
        lesion_rows(prediction),
        KeptPrediction.of(prediction, image_path),  # small: every API call is a session of its own
    )


def after_predict(percentages: dict | None, kept: KeptPrediction | None, uncertainty_open: bool):
    """The page's follow-up: the percentages as sentences, and the uncertainty view if its tab is open."""
    sentences = percentages_sentences(percentages) if percentages else ""
    return sentences, show_uncertainty(kept) if uncertainty_open else None


def _from_kept(kept: KeptPrediction, render) -> str:
    try:
        return render(kept)
    except ImageLoadError as error:  # the upload has aged out of the cache
        raise gr.Error("This frame has expired from the server; upload it again.") from error


def rerender(kept: KeptPrediction | None, opacity: float):
    """Re-blend the last prediction at a new opacity, without running the model again."""
    if kept is None:
        return None
    return _from_kept(kept, lambda k: save_view(k.render_overlay(opacity, MAX_PIXELS), "neopolyp_overlay"))


def show_uncertainty(kept: KeptPrediction | None):
    """The last prediction's uncertainty view, rendered when its tab is opened."""
    if kept is None:
        return None
    return _from_kept(kept, lambda k: save_view(k.render_uncertainty(MAX_PIXELS), "neopolyp_uncertainty"))


def mask_file(kept: KeptPrediction | None):
    """The last prediction's colour mask as a lossless PNG, written only when asked for."""
    if kept is None:
        raise gr.Error("Segment an image first (a result is kept for a few minutes).")
    path = OUTPUTS.save(
        "neopolyp_mask", ".png", lambda path: save_mask_png(kept.mask, path, kept.class_colors), plain_name=True
    )
    return gr.File(value=str(path), visible=True)


def video_path(upload) -> str:
    """The uploaded file's path from the Video component's payload (the event runs with preprocess=False)."""
    if isinstance(upload, dict):
        upload = (upload.get("video") or upload).get("path")
    if not upload:
        raise gr.Error("Upload a video first.")
    return str(upload)


@gpu
def predict_video(upload, progress=gr.Progress()):
    """Segment a clip with lesion tracking: the overlaid MP4, the timeline plot and the track table
    (the /predict_video API). Length and frame size are checked before any frame is decoded."""
    path = video_path(upload)
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
        probe_video(path, MAX_PIXELS, MAX_VIDEO_SECONDS)
        clip = OUTPUTS.save("neopolyp_video", ".mp4", write)
    except (VideoLoadError, ValueError) as error:
        raise gr.Error(f"Cannot segment this video: {str(error).replace(path, Path(path).name)}") from error
    rows = runs[-1].timeline
    timeline = pd.DataFrame(
        [(float(r[1]), float(r[2]), "neoplastic") for r in rows]
        + [(float(r[1]), float(r[3]), "non-neoplastic") for r in rows],
        columns=["time (s)", "polyp pixels (% of frame)", "class"],
    )
    return str(clip), timeline, runs[-1].tracks


def camera_frame(frame: np.ndarray | None, live: LiveSegmenter | None):
    """One webcam frame: its overlay with tracking, or no update where the model is still busy."""
    if frame is None:
        return gr.skip(), live
    live = live or LiveSegmenter(MODEL)
    result = live.segment(frame)
    if result is None:  # dropped: the newest frame wins, so lag never grows
        return gr.skip(), live
    return result[0], live


def legend_html() -> str:
    """Colour legend from the model's own config."""
    items = [
        f'<span style="display:inline-flex;align-items:center;margin-right:1.2em">'
        f'<span style="width:1em;height:1em;background:rgb({r},{g},{b});display:inline-block;'
        f'margin-right:.4em;border:1px solid #888"></span>{name.replace("_", "-")}</span>'
        for name, (r, g, b) in zip(MODEL.config["class_names"][1:], MODEL.config["class_colors"][1:], strict=True)
    ]
    return '<div id="legend">' + "".join(items) + "</div>"


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

with gr.Blocks(title="NeoPolyp: polyp segmentation", delete_cache=(max(1, CACHE_SECONDS // 2), CACHE_SECONDS)) as demo:
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
                tta_input = gr.Checkbox(label="Flip test-time augmentation (3x slower, steadier)", value=False)
                opacity_input = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
                run_button = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Column():
                with gr.Tabs():
                    with gr.Tab("Segmentation") as segmentation_tab:
                        overlay_output = gr.Image(label="Segmentation overlay", type="filepath", elem_id="overlay")
                    with gr.Tab("Uncertainty") as uncertainty_tab:
                        uncertainty_output = gr.Image(
                            label="Uncertainty (bright: the model is unsure)",
                            type="filepath",
                            elem_id="uncertainty",
                        )
                        gr.Markdown(UNCERTAINTY_HELP)
                gr.HTML(legend_html())
                summary_output = gr.Markdown(elem_id="summary")
                # The API's JSON of the same numbers; people read the sentences above.
                percentages_output = gr.JSON(label="Polyp pixels (%)", elem_id="percentages", visible=False)
                mask_button = gr.Button("Make the mask PNG (lossless)", elem_id="make-mask")
                mask_output = gr.File(label="Mask (PNG)", visible=False, elem_id="mask-file")
        lesions_output = gr.Dataframe(
            headers=LESION_HEADERS, label="Lesions (connected polyp regions)", elem_id="lesions", interactive=False
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
                video_button = gr.Button("Segment the clip", variant="primary", elem_id="run-video")
            with gr.Column():
                video_output = gr.Video(label="Overlaid clip", elem_id="video-output")
        timeline_output = gr.LinePlot(
            x="time (s)",
            y="polyp pixels (% of frame)",
            color="class",
            label="Polyp pixels over time",
            elem_id="timeline",
        )
        tracks_output = gr.Dataframe(headers=TRACK_HEADERS, label="Tracks", elem_id="tracks", interactive=False)
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
            camera_output = gr.Image(label="Live overlay", elem_id="camera-output")
    gr.Markdown(
        f"Model: `{INFO.source}` · revision: `{INFO.revision}` · backend: `{INFO.backend}` on `{INFO.device}` "
        f"({INFO.precision}) · input {MODEL.config['input_size']} px, "
        f"trained on: {', '.join(INFO.datasets) or 'unknown'}",
        elem_id="model-info",
    )

    run_button.click(
        predict,
        inputs=[image_input, tta_input, opacity_input],
        outputs=[overlay_output, percentages_output, lesions_output, kept_prediction],
        api_name="predict",
        preprocess=False,
    ).then(
        after_predict,
        inputs=[percentages_output, kept_prediction, uncertainty_open],
        outputs=[summary_output, uncertainty_output],
        api_visibility="private",
    )
    uncertainty_tab.select(
        lambda kept: (True, show_uncertainty(kept)),
        inputs=kept_prediction,
        outputs=[uncertainty_open, uncertainty_output],
        api_visibility="private",
    )
    segmentation_tab.select(lambda: False, outputs=uncertainty_open, api_visibility="private")
    video_button.click(
        predict_video,
        inputs=video_input,
        outputs=[video_output, timeline_output, tracks_output],
        api_name="predict_video",
        preprocess=False,
    )
    camera_input.stream(
        camera_frame,
        inputs=[camera_input, live_state],
        outputs=[camera_output, live_state],
        stream_every=0.1,
        time_limit=300,
        concurrency_limit=2,
        trigger_mode="always_last",
        api_visibility="private",
    )
    mask_button.click(
        mask_file, inputs=kept_prediction, outputs=mask_output, api_name="mask_file", api_visibility="private"
    )
    opacity_input.release(
        rerender, inputs=[kept_prediction, opacity_input], outputs=overlay_output, api_visibility="private"
    )

# Two requests at a time: enough to overlap decoding with inference, without thrashing a small CPU.
# A bounded queue: beyond it a request is refused at once ("queue full, try again") instead of waiting.
demo.queue(default_concurrency_limit=2, max_size=QUEUE_SIZE)

if __name__ == "__main__":
    demo.launch(
        ssr_mode=False,
        allowed_paths=[str(EXAMPLES_DIR)] + ([OPERATOR_EXAMPLES] if OPERATOR_EXAMPLES else []),
        max_file_size=MAX_FILE_SIZE,
        # Gradio keeps every session (a copy of the page's config, ~50 kB, plus its state) until
        # 10,000 of them, and every API call is a session of its own: memory grew with each request.
        state_session_capacity=MAX_SESSIONS,
    )
