"""NeoPolyp Space: colon-polyp segmentation demo (Gradio). Research software, not for clinical use.

Environment: NEOPOLYP_MODEL (model folder or Hub repo id), NEOPOLYP_REVISION (optional),
NEOPOLYP_MAX_PIXELS and NEOPOLYP_PRECISION (fp32 or bf16; optional),
and Gradio's own GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from neopolyp_hf import ImageLoadError, Prediction
from neopolyp_hf.model import ModelSourceError
from neopolyp_hf.preprocessing import DEFAULT_MAX_PIXELS
from neopolyp_hf.serving import (
    LESION_HEADERS,
    lesion_rows,
    load_model_for_serving,
    percentages_summary,
    save_mask_png,
)
from neopolyp_hf.synthetic import synthetic_pair

DEFAULT_MODEL = "neopolyp/neopolyp"
MODEL_SOURCE = os.environ.get("NEOPOLYP_MODEL", DEFAULT_MODEL)
MAX_PIXELS = int(os.environ.get("NEOPOLYP_MAX_PIXELS", DEFAULT_MAX_PIXELS))

try:
    MODEL, INFO = load_model_for_serving(
        MODEL_SOURCE, os.environ.get("NEOPOLYP_REVISION") or None, os.environ.get("NEOPOLYP_PRECISION", "fp32")
    )
except (ModelSourceError, ValueError) as error:
    sys.exit(f"NeoPolyp cannot start: {error}")

try:  # ZeroGPU Spaces hand out the GPU per call.
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn):
        return fn


OUTPUT_DIR = Path(tempfile.mkdtemp(prefix="neopolyp-"))
EXAMPLES_DIR = OUTPUT_DIR / "examples"


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


@gpu
def predict(upload: dict | None, tta: bool, opacity: float):
    """Segment one upload: overlay, percentages and the lesion table (the /predict API).

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
    return (
        prediction.render_overlay(opacity),
        percentages_summary(prediction),
        lesion_rows(prediction),
        prediction,
    )


def rerender(prediction: Prediction | None, opacity: float):
    """Re-blend the last prediction at a new opacity, without running the model again."""
    return None if prediction is None else prediction.render_overlay(opacity)


def mask_file(prediction: Prediction | None):
    """The last prediction's colour mask as a lossless PNG to download."""
    if prediction is None:
        return gr.DownloadButton(visible=False)
    path = Path(tempfile.mkdtemp(dir=OUTPUT_DIR)) / "neopolyp_mask.png"
    return gr.DownloadButton(value=str(save_mask_png(prediction, path)), visible=True)


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

with gr.Blocks(title="NeoPolyp: polyp segmentation") as demo:
    gr.Markdown("# NeoPolyp\nSegments colonoscopy frames into neoplastic and non-neoplastic polyp pixels.")
    gr.Markdown(NOTICE, elem_id="notice")
    if INFO.synthetic:
        gr.Markdown(SYNTHETIC_NOTICE, elem_id="synthetic-notice")
    last_prediction = gr.State(None)
    with gr.Row():
        with gr.Column():
            image_input = gr.Image(label="Colonoscopy frame", type="filepath", sources=["upload"], elem_id="input")
            tta_input = gr.Checkbox(label="Flip test-time augmentation (3x slower, steadier)", value=False)
            opacity_input = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
            run_button = gr.Button("Segment", variant="primary", elem_id="run")
        with gr.Column():
            overlay_output = gr.Image(label="Segmentation overlay", type="pil", format="png", elem_id="overlay")
            gr.HTML(legend_html())
            percentages_output = gr.JSON(label="Polyp pixels (%)", elem_id="percentages")
            download_button = gr.DownloadButton("Download mask (PNG)", visible=False)
    lesions_output = gr.Dataframe(
        headers=LESION_HEADERS, label="Lesions (connected polyp regions)", elem_id="lesions", interactive=False
    )
    gr.Examples(make_examples(), inputs=image_input, label="Synthetic examples")
    gr.Markdown(
        f"Model: `{INFO.source}` · revision: `{INFO.revision}` · device: `{INFO.device}` ({INFO.precision}) · "
        f"input {MODEL.config['input_size']} px, trained on: {', '.join(INFO.datasets) or 'unknown'}",
        elem_id="model-info",
    )

    run_button.click(
        predict,
        inputs=[image_input, tta_input, opacity_input],
        outputs=[overlay_output, percentages_output, lesions_output, last_prediction],
        api_name="predict",
        preprocess=False,
    ).then(mask_file, inputs=last_prediction, outputs=download_button, api_visibility="private")
    opacity_input.release(
        rerender, inputs=[last_prediction, opacity_input], outputs=overlay_output, api_visibility="private"
    )

# Two requests at a time: enough to overlap decoding with inference, without thrashing a small CPU.
demo.queue(default_concurrency_limit=2, max_size=32)

if __name__ == "__main__":
    demo.launch(ssr_mode=False, allowed_paths=[str(OUTPUT_DIR)])
