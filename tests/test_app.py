"""The Space app, launched for real on loopback and driven through gradio_client and Chromium."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    CHROMIUM_NAMES,
    ROOT,
    corner,
    cover_art_memo,
    encode,
    find_chromium,
    load_script,
    marked_frame,
    png_header_only,
    start_app,
    stop_app,
)
from PIL import Image

from neopolyp_hf.onnx.loading import load_segmenter
from neopolyp_hf.serving.settings import SpaceSettings
from neopolyp_hf.serving.space import LESION_HEADERS, percentages_summary

CHROMIUM = find_chromium()
NO_CHROMIUM = f"no Chromium on the PATH ({', '.join(CHROMIUM_NAMES)}): the browser tests skip"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def served(trained_model_dir):
    process, url = start_app(
        {
            "NEOPOLYP_MODEL": str(trained_model_dir / "best"),
            "NEOPOLYP_MAX_PIXELS": "4000000",
            "NEOPOLYP_MAX_FILE_SIZE": "2MB",
            "NEOPOLYP_MAX_VIDEO_SECONDS": "3",
        }
    )
    try:
        yield url, trained_model_dir / "best", process
    finally:
        stop_app(process)


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)


@pytest.fixture(scope="module")
def example_image(tmp_path_factory, synthetic_data) -> Path:
    return sorted((synthetic_data / "train" / "train").glob("*.jpeg"))[3]


def _call(client, path):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/predict")


@pytest.mark.slow
def test_api_matches_the_package(client, served, example_image):
    overlay_path, percentages, lesions = _call(client, example_image)
    # On a CPU the app serves the ONNX Runtime backend (auto): compare like with like.
    segmenter, info = load_segmenter(str(served[1]))
    assert info.backend == "onnx"
    expected = segmenter.predict(example_image)
    overlay = Image.open(overlay_path)
    assert overlay.format == "JPEG" and overlay.size == expected.overlay.size  # full size, fast lossy encoding
    difference = np.abs(np.asarray(overlay.convert("RGB"), np.int16) - np.asarray(expected.overlay, np.int16))
    assert difference.mean() < 3  # JPEG noise only
    assert percentages == percentages_summary(expected)
    assert len(lesions["data"]) == len(expected.lesions)
    assert lesions["headers"] == LESION_HEADERS
    for row, lesion in zip(lesions["data"], expected.lesions, strict=True):
        assert row[5] == round(lesion.neoplastic_probability, 3) and row[6] == ("yes" if lesion.uncertain else "no")


def _bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.slow
def test_bad_uploads_get_clear_errors_and_the_server_keeps_serving(client, served, example_image, tmp_path):
    from gradio_client.exceptions import AppError

    cases = {
        "notes.png": (b"this is not an image", "not a readable image"),
        "broken.jpeg": (_bytes(Image.new("RGB", (300, 300), "red"), "JPEG")[:400], "corrupt or truncated"),
        "huge.png": (_bytes(Image.new("RGB", (2100, 2000))), "over the limit"),
        "bomb.png": (png_header_only(50_000, 50_000), "decompression bomb.*2500000000 pixels"),
        "scan.eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n", "EPS format"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(AppError, match=message) as caught:
            _call(client, path)
        assert name in str(caught.value) and "/tmp/gradio" not in str(caught.value)
        assert _call(client, example_image)[1]  # the next good request still succeeds
    big = tmp_path / "big.png"
    big.write_bytes(_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), np.uint8))))
    assert big.stat().st_size > 2_000_000
    with pytest.raises(Exception, match="exceed.* maximum .*2000000 bytes"):
        _call(client, big)  # gradio_client checks the limit before sending
    import httpx

    answer = httpx.post(served[0] + "gradio_api/upload", files={"files": ("big.png", big.read_bytes(), "image/png")})
    assert answer.status_code == 413 and "maximum allowed size of 2000000 bytes" in answer.text  # the server too
    assert _call(client, example_image)[1]
    served[2].log.seek(0)
    assert "Traceback" not in served[2].log.read()  # a user's error is a message, not a traceback in the log


@pytest.mark.slow
def test_odd_but_valid_images_are_segmented(client, tmp_path):
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    cases = {
        "one_pixel.png": _bytes(Image.new("RGB", (1, 1), "pink")),
        "grey.png": _bytes(Image.new("L", (50, 40), 90)),
        "rgba.png": _bytes(Image.new("RGBA", (50, 40), (200, 100, 100, 128))),
        "sixteen.png": _bytes(Image.fromarray(np.linspace(0, 65535, 2000).reshape(40, 50).astype(np.uint16))),
        "rotated.jpeg": _bytes(Image.fromarray(pixels), "JPEG", exif=exif.tobytes()),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        overlay_path, percentages, *_ = _call(client, tmp_path / name)
        size = Image.open(overlay_path).size
        expected = {"one_pixel.png": (1, 1), "rotated.jpeg": (40, 60)}.get(name, (50, 40))
        assert size == expected, name  # the EXIF-rotated photo comes back upright
        assert set(percentages) == {"neoplastic", "non_neoplastic"}


@pytest.mark.slow
def test_concurrent_requests_agree(client, served, example_image):
    from gradio_client import handle_file

    jobs = [client.submit(handle_file(str(example_image)), api_name="/predict") for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda job: job.result(timeout=120), jobs))
    assert all(r[1] == results[0][1] for r in results)
    # Each request's images are files of their own: the same frame twice never rewrites a file
    # that another client is still downloading.
    names = [Path(r[0]).name for r in results]
    assert len(set(names)) == len(names), names
    assert all(Image.open(r[0]).format == "JPEG" for r in results)


@pytest.mark.slow
def test_cache_is_deleted_and_a_full_queue_says_try_again(trained_model_dir, example_image, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    temp = tmp_path / "gradio-temp"
    process, url = start_app(
        {
            "NEOPOLYP_MODEL": str(trained_model_dir / "best"),
            "NEOPOLYP_CACHE_SECONDS": "3",
            "NEOPOLYP_QUEUE_SIZE": "1",
            "GRADIO_TEMP_DIR": str(temp),
        }
    )
    try:

        def files() -> set[Path]:
            return {p for p in temp.rglob("*") if p.is_file()}

        examples = files()  # Gradio's copies of the start-up examples, which it keeps
        client = Client(url, verbose=False)
        for _ in range(3):
            client.predict(handle_file(str(example_image)), api_name="/predict")
        assert files() - examples  # uploads and JPEG outputs, until the sweep
        deadline = time.time() + 30
        while files() - examples and time.time() < deadline:
            time.sleep(0.5)
        assert not files() - examples, files() - examples

        # Many requests at once into a queue of one: the overflow is refused with "try again".
        jobs = [client.submit(handle_file(str(example_image)), api_name="/predict") for _ in range(12)]
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(job.result(timeout=120)[1])
            except Exception as error:  # QueueError from gradio_client
                assert not isinstance(error, AppError), error
                outcomes.append(str(error))
        refused = [o for o in outcomes if isinstance(o, str)]
        assert refused and all("try again" in o.lower() for o in refused), outcomes
        assert any(isinstance(o, dict) for o in outcomes)
        assert client.predict(handle_file(str(example_image)), api_name="/predict")[1]  # still serving
    finally:
        stop_app(process)


def test_broken_model_source_stops_start_up_with_its_name(tmp_path):
    for source in (str(tmp_path / "no-such-folder"), "nobody/no-such-model"):
        result = subprocess.run(
            [sys.executable, str(ROOT / "app.py")],
            env={**os.environ, "NEOPOLYP_MODEL": source},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert result.returncode != 0
        assert "NeoPolyp cannot start" in result.stderr and source in result.stderr


@pytest.fixture(scope="module")
def app_module():
    """app.py imported in this process: importing it reads no setting, loads no model and writes nothing."""
    return load_script("app", folder=".")


@pytest.fixture(scope="module")
def page(app_module, random_model, tmp_path_factory):
    """The demo built in-process over a small untrained model (torch backend), with no server."""
    folder = tmp_path_factory.mktemp("page") / "my-model"
    random_model.save_pretrained(folder)
    model, info = load_segmenter(str(folder), backend="torch")
    settings = SpaceSettings.from_environ({"NEOPOLYP_MAX_VIDEO_SECONDS": "7"})
    return app_module.build_demo(model, info, settings), folder


def test_importing_the_app_has_no_side_effect(monkeypatch, tmp_path):
    monkeypatch.setenv("NEOPOLYP_MODEL", str(tmp_path / "no-such-model"))  # would stop a start
    monkeypatch.setenv("NEOPOLYP_QUEUE_SIZE", "nan")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where synthetic examples would be written
    module = load_script("app", folder=".")
    assert callable(module.build_demo) and callable(module.main)
    assert list(tmp_path.iterdir()) == []


def test_the_built_page_names_its_model_limits_and_api_without_a_server(page):
    demo, folder = page
    config = demo.get_config_file()
    text = json.dumps(config, default=str)
    assert "not for clinical use" in text and "up to 7 s" in text
    assert f"`{folder.name}`" in text and str(folder) not in text  # the folder's name, never the server's path
    endpoints = {d.get("api_name") for d in config["dependencies"] if d.get("api_visibility") != "private"}
    assert {"predict", "predict_video", "predict_seg"} <= endpoints
    assert demo._queue.max_size == 16  # the settings' default queue: bounded
    assert "*pixel confidence*: the mean" in text  # every lesion column explained


def test_the_dicom_inputs_take_pacs_files_and_segment_is_pressed_after_a_dicom_upload(page, random_model, tmp_path):
    """A PACS file has no extension: the DICOM inputs take any file (the package reads it by content). Pressing
    Segment after a DICOM upload segments that DICOM, instead of clearing the page for want of an image."""
    from helpers import dicom_still

    from neopolyp_hf.serving.handlers import SpaceHandlers

    config = page[0].get_config_file()
    props = {c["props"].get("elem_id"): c["props"] for c in config["components"] if c.get("props", {}).get("elem_id")}
    assert props["dicom-input"].get("file_types") is None and props["dicom-video-input"].get("file_types") is None
    model, info = load_segmenter(str(page[1]), backend="torch")
    handlers = SpaceHandlers(model, info, SpaceSettings())
    still = dicom_still(tmp_path / "1.2.826.0.1.3680043.8.498.7", marked_frame(96, 64))
    overlay, percentages, rows, kept, sentences, *_ = handlers.segment_button(
        None, {"path": str(still)}, False, 0.5, False
    )
    assert overlay and kept is not None and "Read DICOM" in sentences
    assert handlers.segment_button(None, None, False, 0.5, False)[4] == "Upload an image first."


def test_the_page_shows_the_models_card_figures(app_module, page):
    import dataclasses

    demo, folder = page
    model, info = load_segmenter(str(folder), backend="torch")
    info = dataclasses.replace(info, metrics=(("dice_mean", 0.65), ("dice_neoplastic", 0.8123)))
    text = json.dumps(app_module.build_demo(model, info, SpaceSettings()).get_config_file(), default=str)
    assert "card's held-out figures: dice mean 0.650, dice neoplastic 0.812" in text


def test_the_page_takes_its_colours_and_names_from_the_one_class_table(page):
    config = page[0].get_config_file()
    props = {c["props"].get("elem_id"): c["props"] for c in config["components"] if c.get("props", {}).get("elem_id")}
    assert props["timeline"]["color_map"] == {"Neoplastic": "#ff0000", "Non-neoplastic": "#00ff00"}
    legends = [c["props"]["value"] for c in config["components"] if "legend" in str(c.get("props", {}).get("value"))]
    assert any('id="camera-legend"' in html for html in legends)  # the Camera tab has its legend too
    assert all("Non-neoplastic" in html and "non_neoplastic" not in html for html in legends)
    assert "uncertainty-scale" in json.dumps(config["components"], default=str)
    assert props["tracks"]["headers"][4] == "first seen (s)"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("NEOPOLYP_MAX_VIDEO_SECONDS", "nan", "NEOPOLYP_MAX_VIDEO_SECONDS='nan' must be a positive number of seconds"),
    ],
)
def test_a_setting_that_is_not_one_stops_start_up_naming_the_variable(variable, value, message, tmp_path):
    """nan once passed the check and switched the video length limit off; inf ended in an OverflowError."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        env={**os.environ, "NEOPOLYP_MODEL": str(tmp_path / "unused"), variable: value},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr


@pytest.mark.slow
@pytest.mark.browser
def test_browser_upload_shows_overlay_and_numbers(served, example_image, tmp_path):
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(served[0], wait_until="load")
            page.locator("#run").wait_for(state="visible", timeout=60_000)
            assert "not for clinical use" in page.inner_text("#notice")
            assert "Synthetic examples" in page.inner_text("body")  # the synthetic demo model only
            page.locator("input[type=file]").first.set_input_files(str(example_image))
            page.wait_for_timeout(1500)
            page.click("#run")
            page.locator("#overlay img").wait_for(state="visible", timeout=90_000)
            page.get_by_text("of the polyp area").first.wait_for(timeout=30_000)
            text = page.inner_text("#summary")
            assert "Neoplastic" in text and "Non-neoplastic" in text and "% of the image" in text
            assert "percent_of_image" not in page.inner_text("body")  # no raw JSON for people
            assert "backend: onnx" in page.inner_text("#model-info")
            page.get_by_role("tab", name="Uncertainty").click()  # rendered only now
            page.locator("#uncertainty img").wait_for(state="visible", timeout=30_000)
            assert "neopolyp_uncertainty-" in page.locator("#uncertainty img").get_attribute("src")
            page.click("#make-mask")
            page.locator("#mask-file a").first.wait_for(timeout=30_000)
            assert page.locator("#mask-file a").first.get_attribute("href").endswith("/neopolyp_mask.png")
            source = page.locator("#overlay img").get_attribute("src")
            assert source and "neopolyp_overlay-" in source and source.endswith(".jpeg")
            assert page.locator("#overlay img").evaluate("img => img.naturalWidth") > 0  # fetched and decoded
            page.screenshot(path=str(tmp_path / "neopolyp_app.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'neopolyp_app.png'}")

            # A failed request leaves nothing of the earlier frame: no numbers, overlay, lesions or mask.
            page.locator("#input button[aria-label='Remove Image']").first.click()
            page.click("#run")
            page.get_by_text("Upload an image first.").first.wait_for(timeout=30_000)
            assert page.inner_text("#summary").strip() == "Upload an image first."
            assert page.locator("#overlay img").count() == 0 and page.locator("#mask-file a").count() == 0
            assert "Neoplastic" not in page.inner_text("#lesions")
            assert page.get_by_text("Error", exact=True).count() == 0  # a message, not a badge on every output
        finally:
            browser.close()
    assert (tmp_path / "neopolyp_app.png").stat().st_size > 10_000


@pytest.mark.slow
def test_video_api_tracks_a_clip_and_refuses_bad_ones_clearly(client, served, small_clip, clip_scenes, tmp_path):
    from gradio_client import handle_file

    from neopolyp_hf.classes import display_name
    from neopolyp_hf.serving.space import MIN_TRACK_FRAMES, TRACK_TABLE_HEADERS
    from neopolyp_hf.training.clips import clip_frames, write_clip
    from neopolyp_hf.video.pipeline import write_video_outputs
    from neopolyp_hf.video.sources import probe_video, read_frames

    clip, timeline, tracks = client.predict(handle_file(str(small_clip)), api_name="/predict_video")
    path = clip["video"] if isinstance(clip, dict) else clip
    assert probe_video(path).codec == "h264"
    segmenter, _ = load_segmenter(str(served[1]))  # the app's backend: ONNX Runtime on a CPU
    expected = write_video_outputs(segmenter, small_clip)
    assert tracks["headers"] == TRACK_TABLE_HEADERS  # readable headers, display names, times in seconds
    listed = [r for r in expected.tracks if int(r[6]) >= MIN_TRACK_FRAMES]  # fragments are counted, not listed
    assert [row[:2] for row in tracks["data"]] == [[r[0], display_name(r[1])] for r in listed]
    assert len(timeline["data"]) == 2 * expected.frames  # a point per frame and polyp class

    long_clip = write_clip(
        tmp_path / "long.mp4", [f for _, f, _ in clip_frames(clip_scenes, 16, (160, 120))], fps=8.0
    )  # 4 s, over the app's 3 s limit
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    memo = cover_art_memo(tmp_path / "memo.mp3")
    refusals = (
        (long_clip, "lasts 4.0 s, over the limit of 3 s"),
        (not_video, "not a readable video"),
        (memo, r"has no video stream \(only a cover picture\)"),
    )
    for bad, message in refusals:
        with pytest.raises(Exception, match=message) as raised:
            client.predict(handle_file(str(bad)), api_name="/predict_video")
        assert str(tmp_path) not in str(raised.value)  # the upload is named by its file name only
    _, _, tracks = client.predict(handle_file(str(small_clip)), api_name="/predict_video")
    assert [row[:2] for row in tracks["data"]] == [[r[0], display_name(r[1])] for r in listed]  # still serving
    phone = encode(tmp_path / "phone.mp4", [marked_frame(320, 240)] * 4, rotation=-90)
    clip, _, _ = client.predict(handle_file(str(phone)), api_name="/predict_video")
    upright = next(iter(read_frames(clip["video"] if isinstance(clip, dict) else clip))).rgb
    assert upright.shape[:2] == (320, 240) and corner(upright) == "top-right"  # as the phone showed it


@pytest.mark.slow
@pytest.mark.browser
def test_browser_video_upload_and_live_camera(served, small_clip, clip_scenes, tmp_path):
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    from neopolyp_hf.training.clips import clip_frames, write_clip

    camera = write_clip(tmp_path / "camera.y4m", [f for _, f, _ in clip_frames(clip_scenes, 8, (160, 120))], fps=8.0)
    fake_camera = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + fake_camera)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 1100}, permissions=["camera"]).new_page()
            page.goto(served[0], wait_until="load")
            page.get_by_role("tab", name="Video").click()
            page.locator("#video-input input[type=file]").set_input_files(str(small_clip))
            page.wait_for_timeout(1500)
            page.click("#run-video")
            page.locator("#video-output video").wait_for(state="visible", timeout=120_000)
            assert page.locator("#video-output video").get_attribute("src").endswith(".mp4")
            page.locator("#tracks").get_by_text("first seen (s)").wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "neopolyp_video.png"), full_page=True)

            page.get_by_role("tab", name="Camera").click()
            page.get_by_text("Click to Access Webcam").click()
            page.locator("#camera-input button[aria-label='capture photo']").click()  # starts the stream
            page.locator("#camera-output img").wait_for(state="visible", timeout=90_000)  # a tracked overlay back
            assert page.locator("#camera-output img").evaluate("img => img.naturalWidth") == 160
            page.locator("#camera-summary").get_by_text("of the frame").first.wait_for(timeout=30_000)  # live shares
            assert "Non-neoplastic" in page.inner_text("#camera-legend")
            page.screenshot(path=str(tmp_path / "neopolyp_camera.png"), full_page=True)
        finally:
            browser.close()


def _call_page_event(url: str, session_hash: str, api_name: str, data: list) -> dict:
    """Run one of the page's own (private) events in a session, as the browser does: join the
    queue, then read the session's event stream to the end of that event."""
    import json

    import httpx

    config = httpx.get(url + "config").json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)
    payload = {"data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None}
    httpx.post(url + "gradio_api/queue/join", json=payload).raise_for_status()
    logs = []  # the notices (gr.Warning) the event showed
    with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session_hash}, timeout=60) as s:
        for line in s.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "log":
                logs.append(message.get("log"))
            if message.get("msg") == "process_completed":
                return {**message, "logs": logs}
    raise AssertionError(f"no result for {api_name}")


@pytest.mark.slow
def test_sessions_beyond_the_cap_are_dropped_least_recently_used_first(
    trained_model_dir, example_image, small_clip, tmp_path
):
    import httpx
    from gradio_client import Client, handle_file

    # A model trained on real data (its card says so) shows no synthetic examples; an operator's show.
    real = tmp_path / "real_model"
    real.mkdir()
    for name in ("config.json", "model.safetensors"):
        (real / name).write_bytes((trained_model_dir / "best" / name).read_bytes())
    card = (trained_model_dir / "best" / "README.md").read_text().replace("neopolyp-synthetic", "bkai-igh-neopolyp")
    (real / "README.md").write_text(card)
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "frame_a.jpeg").write_bytes(example_image.read_bytes())
    (examples / "clip_b.mp4").write_bytes(small_clip.read_bytes())
    # Every API call is a session; Gradio would keep 10,000 of them (memory grows per request).
    process, url = start_app({"NEOPOLYP_MODEL": str(real), "NEOPOLYP_MAX_SESSIONS": "2"})
    try:
        page = httpx.get(url + "config").text
        assert "Synthetic examples" not in page and "synthetic_0" not in page
    finally:
        stop_app(process)
    process, url = start_app(
        {"NEOPOLYP_MODEL": str(real), "NEOPOLYP_MAX_SESSIONS": "2", "NEOPOLYP_EXAMPLES": str(examples)}
    )
    try:
        page = httpx.get(url + "config").text
        assert "frame_a.jpeg" in page and "clip_b.mp4" in page and "Synthetic examples" not in page
        clients = [Client(url, verbose=False) for _ in range(3)]
        clients[0].predict(handle_file(str(example_image)), api_name="/predict")
        made = _call_page_event(url, clients[0].session_hash, "mask_file", [None])
        assert made["success"] and made["output"]["data"][0]["visible"], made  # the kept prediction's mask PNG
        for client in clients[1:]:  # two newer sessions: the first is dropped
            client.predict(handle_file(str(example_image)), api_name="/predict")
        dropped = _call_page_event(url, clients[0].session_hash, "mask_file", [None])
        assert not dropped["output"]["data"][0]["visible"], dropped  # nothing kept, so no mask is offered
        assert any("Segment an image first" in str(log) for log in dropped["logs"]), dropped  # a notice says why
        kept = _call_page_event(url, clients[2].session_hash, "mask_file", [None])
        assert kept["output"]["data"][0]["visible"], kept  # the newest is still there
    finally:
        stop_app(process)


@pytest.mark.slow
def test_dicom_uploads_are_read_and_give_a_seg_with_no_patient_field(client, served, small_clip, tmp_path):
    from gradio_client import handle_file
    from helpers import PATIENT_FIELDS, dicom_still, dicom_video

    from neopolyp_hf.dicom_seg.writer import read_seg_mask

    still = dicom_still(tmp_path / "frame.dcm", marked_frame(96, 64), layout="jpeg")
    answers = [_call(client, still)]
    segmenter, _ = load_segmenter(str(served[1]))
    assert answers[0][1] == percentages_summary(segmenter.predict(still))
    seg = client.predict(handle_file(str(still)), api_name="/predict_seg")
    assert isinstance(seg, str) and seg.endswith(".dcm")  # the file the API promises, not a page update
    mask, info = read_seg_mask(seg)
    np.testing.assert_array_equal(mask, segmenter.predict(still).mask)
    assert info["labels"] == {1: "neoplastic polyp", 2: "non-neoplastic polyp"}
    video = dicom_video(tmp_path / "procedure.dcm", small_clip.read_bytes(), 120, 160, 16, "1.2.840.10008.1.2.4.102")
    answers.append(client.predict(handle_file(str(video)), api_name="/predict_video"))
    assert len(answers[-1][1]["data"]) == 2 * 16  # a point per frame and polyp class
    refusals = (
        (
            "/predict",
            dicom_still(
                tmp_path / "grey.dcm", marked_frame(32, 32), PhotometricInterpretation="MONOCHROME2", SamplesPerPixel=1
            ),
            "MONOCHROME2",
        ),
        ("/predict_video", dicom_still(tmp_path / "report.dcm", marked_frame(32, 32), PixelData=None), "no Pixel Data"),
        ("/predict_seg", small_clip, "not DICOM"),
    )
    messages = []
    for endpoint, upload, reason in refusals:
        with pytest.raises(Exception, match=reason) as refused:
            client.predict(handle_file(str(upload)), api_name=endpoint)
        messages.append(str(refused.value))
    served[2].log.seek(0)
    files = [
        Path(answers[0][0]).read_bytes(),
        Path(answers[1][0]["video"] if isinstance(answers[1][0], dict) else answers[1][0]).read_bytes(),
    ]
    for text in [json.dumps(answers, default=str), *messages, served[2].log.read()]:
        assert not [v for v in PATIENT_FIELDS.values() if v in text]
    for content in files:
        assert not [v for v in PATIENT_FIELDS.values() if v.encode() in content]


@pytest.mark.slow
def test_queued_clips_keep_their_uploads_however_long_they_wait(trained_model_dir, clip_scenes, tmp_path):
    """Ten clips at once, two at a time, with a one-second cache: the later ones wait many cache periods in the
    queue, and each is still answered (the sweep once deleted queued uploads: "video ... does not exist")."""
    from gradio_client import Client, handle_file

    from neopolyp_hf.training.clips import clip_frames, write_clip

    temp = tmp_path / "gradio-temp"
    clip = write_clip(tmp_path / "clip.mp4", [f for _, f, _ in clip_frames(clip_scenes, 24, (320, 240))], fps=8.0)
    process, url = start_app(
        {
            "NEOPOLYP_MODEL": str(trained_model_dir / "best"),
            "NEOPOLYP_CACHE_SECONDS": "1",
            "NEOPOLYP_MAX_VIDEO_SECONDS": "60",
            "GRADIO_TEMP_DIR": str(temp),
        }
    )
    try:
        client = Client(url, verbose=False)
        jobs = [client.submit(handle_file(str(clip)), api_name="/predict_video") for _ in range(10)]
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda job: job.result(timeout=300), jobs))
        assert [len(r[1]["data"]) for r in results] == [2 * 48] * 10  # every clip answered, a point per frame
        deadline = time.time() + 30  # and the sweep still clears what is no longer held
        while [p for p in temp.rglob("*.mp4")] and time.time() < deadline:
            time.sleep(0.5)
        assert not [p for p in temp.rglob("*.mp4")]
    finally:
        stop_app(process)
