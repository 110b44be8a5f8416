"""The Space's /predict wiring with no model: the floor of Gradio's own round trip, for benchmarks/app.py.

The same components, event options and queue as app.py's /predict (a file payload handed over
untouched, an overlay file, the percentages, the lesion table, a kept state); the handler sends the
uploaded frame back as the "overlay" and empty tables, so a request here costs only the upload, the
queue, the event stream and the overlay's download. Run by benchmarks/app.py on a 127.0.0.1 port.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import gradio as gr

OUTPUTS = Path(tempfile.mkdtemp(prefix="gradio-floor-"))


def predict(upload: dict | None, tta: bool, opacity: float):
    """A copy of the upload back as the overlay (a new file, as the app's overlay is, so that Gradio
    caches it as it does the app's); no percentages, no lesions, nothing kept."""
    if not upload or not upload.get("path"):
        raise gr.Error("Upload an image first.", print_exception=False)
    handle, copy = tempfile.mkstemp(dir=OUTPUTS, suffix=Path(upload["path"]).suffix)
    os.close(handle)
    shutil.copyfile(upload["path"], copy)
    return copy, {}, [], None


with gr.Blocks(title="Gradio's floor") as demo:
    kept = gr.State(None)
    image_input = gr.Image(type="filepath", sources=["upload"])
    tta_input = gr.Checkbox(value=False)
    opacity_input = gr.Slider(0.0, 1.0, value=0.5)
    overlay_output = gr.Image(type="filepath")
    percentages_output = gr.JSON(visible=False)
    lesions_output = gr.Dataframe(interactive=False)
    button = gr.Button(visible=False)
    button.click(
        predict,
        inputs=[image_input, tta_input, opacity_input],
        outputs=[overlay_output, percentages_output, lesions_output, kept],
        api_name="predict",
        preprocess=False,
    )
demo.queue(default_concurrency_limit=2)

if __name__ == "__main__":
    demo.launch(ssr_mode=False)
