"""NeoPolyp Space: colon-polyp segmentation demo (Gradio). Research software, not for clinical use.

The page's layout and wiring; the handlers live in neopolyp_hf.serving.handlers and the settings (all
optional, NEOPOLYP_*: MODEL, REVISION, BACKEND, PRECISION, MAX_PIXELS, MAX_FILE_SIZE, CACHE_SECONDS,
QUEUE_SIZE, MAX_OUTPUT_MB, MAX_SESSIONS, MAX_VIDEO_SECONDS, EXAMPLES) in neopolyp_hf.serving.settings,
with Gradio's GRADIO_SERVER_NAME / _PORT. `build_demo(model, info, settings)` builds the page in-process.
"""

from __future__ import annotations

import sys

import gradio as gr

from neopolyp_hf.errors import ConfigError, ModelSourceError
from neopolyp_hf.onnx.loading import load_segmenter
from neopolyp_hf.serving.handlers import Examples, SpaceHandlers, page_examples
from neopolyp_hf.serving.settings import SpaceSettings
from neopolyp_hf.serving.space import (
    LESION_HEADERS,
    LESION_TABLE_HELP,
    TRACK_TABLE_HEADERS,
    card_figures,
    class_color_map,
    legend_html,
    limit_malloc_arenas,
    start_cache_sweeper,
    uncertainty_scale_html,
)

try:  # ZeroGPU Spaces hand out the GPU per call.
    from spaces import GPU as gpu
except ImportError:

    def gpu(fn):
        return fn


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
    "flagged *uncertain*, and outlined in yellow, when its calibrated P(neoplastic | polyp) lies in the model's "
    "`uncertain_range` {}."
)


def build_demo(model, info, settings: SpaceSettings, examples: Examples | None = None) -> gr.Blocks:
    """The page and its API over one loaded model (`load_segmenter`'s model and info)."""
    handlers = SpaceHandlers(model, info, settings)
    examples = examples or Examples()
    config = model.config
    private = {"api_visibility": "private"}
    with gr.Blocks(title="NeoPolyp: polyp segmentation") as demo:
        gr.Markdown("# NeoPolyp\nSegments colonoscopy frames into neoplastic and non-neoplastic polyp pixels.")
        gr.Markdown(NOTICE, elem_id="notice")
        if info.synthetic:
            gr.Markdown(SYNTHETIC_NOTICE, elem_id="synthetic-notice")
        kept_prediction = gr.State(None, time_to_live=settings.cache_seconds)
        uncertainty_open = gr.State(False)
        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column():
                    image_input = gr.Image(
                        label="Colonoscopy frame", type="filepath", sources=["upload"], elem_id="input"
                    )
                    # Any file: a PACS names DICOM by its UID, without an extension; the package reads it by content.
                    dicom_input = gr.File(
                        label="... or a DICOM still (.dcm, or a PACS file of any name)", elem_id="dicom-input"
                    )
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
                            gr.Markdown(UNCERTAINTY_HELP.format(config["uncertain_range"]))
                    summary_output = gr.Markdown(elem_id="summary")
                    # The API's JSON of the same numbers; people read the sentences above.
                    percentages_output = gr.JSON(label="Polyp pixels (%)", elem_id="percentages", visible=False)
                    mask_button = gr.Button("Make the mask PNG (lossless)", elem_id="make-mask")
                    mask_output = gr.File(label="Mask (PNG)", visible=False, elem_id="mask-file")
                    seg_button = gr.Button("Make the DICOM SEG (of a .dcm still)", elem_id="make-seg")
                    seg_output = gr.File(label="DICOM SEG", visible=False, elem_id="seg-file")
            lesions_output = gr.Dataframe(
                headers=LESION_HEADERS,
                label=f"Lesions (connected polyp regions of at least {config.get('min_lesion_area', 0)} px)",
                elem_id="lesions",
                interactive=False,
            )
            gr.Markdown(LESION_TABLE_HELP, elem_id="lesions-help")
            if examples.images:
                gr.Examples(examples.images, inputs=image_input, label=examples.label)
        with gr.Tab("Video"):
            gr.Markdown(
                f"Upload a clip of up to {settings.max_video_seconds:g} s. Lesions are tracked across frames, "
                "and each keeps one class over its track, decided from all the frames it was seen in."
            )
            with gr.Row():
                with gr.Column():
                    video_input = gr.Video(label="Colonoscopy clip", sources=["upload"], elem_id="video-input")
                    dicom_video_input = gr.File(
                        label="... or a DICOM video (.dcm, or a PACS file of any name)", elem_id="dicom-video-input"
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
                headers=TRACK_TABLE_HEADERS, label="Tracks (longest seen first)", elem_id="tracks", interactive=False
            )
            if examples.videos:
                gr.Examples(examples.videos, inputs=video_input, label=examples.label)
        with gr.Tab("Camera"):
            gr.Markdown(
                "Stream your camera: each frame comes back overlaid, with lesions tracked. Frames that arrive "
                "while the model is busy are dropped, so the picture never lags further behind."
            )
            live_state = gr.State(None, time_to_live=settings.cache_seconds)
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
            f"Model: `{handlers.model_name}` · revision: `{info.revision}` · backend: `{info.backend}` on "
            f"`{info.device}` ({info.precision}) · input {config['input_size']} px, "
            f"trained on: {', '.join(info.datasets) or 'unknown'}"
            + (f" · its card's held-out figures: {card_figures(info.metrics)}" if info.metrics else ""),
            elem_id="model-info",
        )

        # The page and the API are two events: the page clears a failed request's outputs and shows a
        # notice, the API answers with an error (a hidden button carries its endpoint).
        image_outputs = [overlay_output, percentages_output, lesions_output, kept_prediction]
        page_outputs = [*image_outputs, summary_output, uncertainty_output, mask_output]
        page_inputs = [tta_input, opacity_input, uncertainty_open]
        run_button.click(
            gpu(handlers.segment_button),
            [image_input, dicom_input, *page_inputs],
            page_outputs,
            preprocess=False,
            **private,
        )
        dicom_input.upload(
            gpu(handlers.predict_page), [dicom_input, *page_inputs], page_outputs, preprocess=False, **private
        )
        # The page shows one input at a time: a new upload of one kind clears the other.
        dicom_input.upload(lambda: None, outputs=image_input, **private)
        image_input.upload(lambda: None, outputs=dicom_input, **private)
        gr.Button(visible=False).click(
            gpu(handlers.predict),
            [image_input, tta_input, opacity_input],
            image_outputs,
            api_name="predict",
            preprocess=False,
        )
        uncertainty_tab.select(
            handlers.open_uncertainty, kept_prediction, [uncertainty_open, uncertainty_output], **private
        )
        segmentation_tab.select(lambda: False, outputs=uncertainty_open, **private)
        video_outputs = [video_output, timeline_output, tracks_output]
        for source, trigger in ((video_input, video_button.click), (dicom_video_input, dicom_video_input.upload)):
            trigger(gpu(handlers.predict_video_page), source, [*video_outputs, video_note], preprocess=False, **private)
        gr.Button(visible=False).click(
            gpu(handlers.predict_video), video_input, video_outputs, api_name="predict_video", preprocess=False
        )
        camera_input.stream(
            gpu(handlers.camera_frame),
            inputs=[camera_input, live_state],
            outputs=[camera_output, camera_summary, live_state],
            stream_every=0.1,
            time_limit=300,
            concurrency_limit=2,
            trigger_mode="always_last",
            **private,
        )
        mask_button.click(handlers.mask_file, kept_prediction, mask_output, api_name="mask_file", **private)
        seg_button.click(handlers.seg_file, kept_prediction, seg_output, **private)
        gr.Button(visible=False).click(
            gpu(handlers.predict_seg), dicom_input, seg_output, api_name="predict_seg", preprocess=False
        )
        opacity_input.release(handlers.rerender, [kept_prediction, opacity_input], overlay_output, **private)
    # Two requests at a time: enough to overlap decoding with inference, without thrashing a small CPU.
    # A bounded queue: beyond it a request is refused at once ("queue full, try again") instead of waiting.
    return demo.queue(default_concurrency_limit=2, max_size=settings.queue_size)


def main() -> None:
    """Read the settings, load the model once, serve. A wrong setting or model source stops the start in
    one line naming it."""
    limit_malloc_arenas()  # before the server's threads start: bounded memory under load
    try:
        settings = SpaceSettings.from_environ()
        model, info = load_segmenter(settings.model, settings.revision, settings.backend, settings.precision)
    except (ConfigError, ModelSourceError) as error:
        sys.exit(f"NeoPolyp cannot start: {error}")
    examples = page_examples(settings, info)
    demo = build_demo(model, info, settings, examples)
    # Gradio's own sweep deletes uploads by age alone, queued ones too; this one keeps what a request holds.
    start_cache_sweeper(demo, every=max(1, settings.cache_seconds // 2), age=settings.cache_seconds)
    demo.launch(
        ssr_mode=False,
        allowed_paths=[examples.folder] if examples.folder else [],
        max_file_size=int(settings.max_file_size),
        # Gradio keeps every session (a copy of the page's config, ~50 kB, plus its state) until 10,000
        # of them, and every API call is a session of its own: memory grew with each request.
        state_session_capacity=settings.max_sessions,
    )


if __name__ == "__main__":
    main()
