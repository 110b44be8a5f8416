"""Faults as they happen in the field: 16-bit frames, two files with one id, a full disk, a stopped job.
Each input or event is made here; nothing half-written may stay behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import ROOT, load_script

from neopolyp_hf import load_image

predict_script = load_script("predict")


def run_predict(*argv) -> Path:
    return predict_script.main(predict_script.get_args_parser().parse_args([str(a) for a in argv]))


@pytest.fixture()
def model_dir(random_model, tmp_path) -> Path:
    random_model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.parametrize("channels", [3, 4])
def test_a_16_bit_colour_array_is_the_frame_its_16_bit_png_is(channels, random_model, tmp_path):
    rng = np.random.default_rng(channels)
    colour = rng.integers(0, 65536, (48, 64, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "frame.png"), colour[..., ::-1])  # what a capture card's software saves
    array = colour if channels == 3 else np.concatenate([colour, np.full((48, 64, 1), 65535, np.uint16)], axis=2)
    np.testing.assert_array_equal(load_image(array), load_image(tmp_path / "frame.png"))
    assert np.abs(load_image(array).astype(int) - colour / 257).max() <= 1  # the 8-bit scale of the same colours
    prediction = random_model.predict(array)
    np.testing.assert_array_equal(prediction.mask, random_model.predict(tmp_path / "frame.png").mask)


def test_two_files_with_one_id_are_refused_by_name(model_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    frame = np.full((40, 40, 3), 120, np.uint8)
    cv2.imwrite(str(images / "x.png"), frame)
    cv2.imwrite(str(images / "x.tiff"), frame)
    with pytest.raises(SystemExit, match=r"'x.png' and 'x.tiff' .* have the same id 'x'"):
        run_predict("--model", model_dir, "--images", images, "--output", tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` mounted at `folder` (root only; the test skips, saying why, elsewhere)."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_is_named_and_leaves_no_partial_outputs(model_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):  # noise compresses badly: the masks and probabilities fill the disk
        cv2.imwrite(str(images / f"f{index}.png"), rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    with small_disk(tmp_path / "disk", "400k") as disk:
        with pytest.raises(SystemExit, match=r"no space left on device while writing '.*disk/"):
            run_predict(
                "--model",
                model_dir,
                "--images",
                images,
                "--output",
                disk / "submission.csv",
                "--masks-dir",
                disk / "masks",
                "--save-probabilities",
                disk / "probabilities",
            )
        assert sorted(p.name for p in disk.rglob("*")) == []  # no mask, no folder, no temporary file


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_stops_a_video_run_and_leaves_nothing_half_written(stop, model_dir, tmp_path):
    from neopolyp_hf.training.clips import write_clip

    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    frames = [np.roll(base, shift, axis=1) for shift in range(600)]
    clip = write_clip(tmp_path / "long.mp4", frames, fps=30.0)
    out = tmp_path / "out"
    command = [
        sys.executable,
        str(ROOT / "train" / "predict.py"),
        "--model",
        str(model_dir),
        "--video",
        str(clip),
        "--output-video",
        str(out / "overlay.mp4"),
        "--save-masks",
        str(out / "masks"),
        "--backend",
        "torch",
    ]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and job.poll() is None:
        if (out / "masks").is_dir() and len(list((out / "masks").iterdir())) >= 5:
            break
        time.sleep(0.02)
    assert job.poll() is None, f"the run ended before it could be stopped: {job.stderr.read().decode()[-500:]}"
    job.send_signal(stop)
    assert job.wait(timeout=60) == 128 + stop
    assert not out.exists() or sorted(p.name for p in out.rglob("*")) == []


@pytest.mark.slow
def test_a_variable_frame_rate_recording_keeps_its_frame_times(random_model, tmp_path):
    """A browser MediaRecorder WebM: VP8 frames at irregular times. The overlay plays in the upload's time."""
    import av

    from neopolyp_hf.video.pipeline import write_video_outputs
    from neopolyp_hf.video.sources import read_frames

    rng = np.random.default_rng(2)
    times = np.cumsum(np.r_[0.0, rng.uniform(0.03, 0.4, size=24)])  # 25 frames over several seconds
    upload = tmp_path / "recording.webm"
    container = av.open(str(upload), "w", format="webm")
    stream = container.add_stream("libvpx", rate=30)
    stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
    stream.codec_context.time_base = Fraction(1, 1000)  # MediaRecorder stamps frames in milliseconds
    for time_s in times:
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), format="rgb24")
        frame.pts, frame.time_base = round(time_s * 1000), Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    written = write_video_outputs(random_model, upload, output_video=tmp_path / "overlay.mp4").files["video"]
    uploaded = [frame.time for frame in read_frames(upload)]
    overlaid = [frame.time for frame in read_frames(written)]
    assert len(overlaid) == len(uploaded) == 25
    assert np.abs(np.array(overlaid) - np.array(uploaded)).max() < 0.002  # each frame at its own time
    assert abs(overlaid[-1] - times[-1]) < 0.002  # so the overlay lasts as long as the upload


SRGB_D50 = np.array([(0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)])  # rXYZ, gXYZ, bXYZ


def _srgb_reference(rgb: np.ndarray, primaries, gamma: float) -> np.ndarray:
    """The slow reference: gamma-encoded values in a profile's primaries -> XYZ (D50) -> sRGB, in plain numpy."""
    linear = (rgb / 255.0) ** gamma
    xyz = linear @ np.array(primaries)
    srgb_linear = np.clip(xyz @ np.linalg.inv(SRGB_D50), 0, 1)
    encoded = np.where(srgb_linear <= 0.0031308, 12.92 * srgb_linear, 1.055 * srgb_linear ** (1 / 2.4) - 0.055)
    return np.round(encoded * 255)


@pytest.mark.parametrize("space", ["display-p3", "adobe-rgb"])
def test_a_frame_with_a_wide_gamut_profile_is_read_as_the_srgb_a_viewer_shows(space, tmp_path):
    from helpers import ADOBE_RGB, DISPLAY_P3, icc_profile
    from PIL import Image

    primaries = DISPLAY_P3 if space == "display-p3" else ADOBE_RGB
    colours = np.array([[[200, 120, 100], [90, 160, 110], [128, 128, 128], [60, 70, 180]]], np.uint8)
    frame = np.repeat(np.repeat(colours, 16, axis=0), 16, axis=1)
    tagged = tmp_path / f"{space}.png"
    Image.fromarray(frame).save(tagged, icc_profile=icc_profile(*primaries, gamma=2.2, name=space))
    read = load_image(tagged)
    expected = _srgb_reference(colours[0].astype(float), primaries, 2.2)
    assert np.abs(read[8, 8::16].astype(int) - expected).max() <= 2  # LittleCMS against the plain formulas
    assert np.abs(read.astype(int) - frame).max() >= 5  # and the profile did matter: the 5-7 levels
    Image.fromarray(frame).save(tmp_path / "untagged.png")
    np.testing.assert_array_equal(load_image(tmp_path / "untagged.png"), frame)  # no profile: sRGB as it is


def _bt2100_hlg_to_srgb(signal: np.ndarray) -> np.ndarray:
    """The slow reference for one HLG BT.2020 colour: BT.2100 inverse OETF and OOTF (1000 cd/m2), BR.2408's
    203 cd/m2 as SDR white, BT.2087's matrix to BT.709, the roll-off above 0.8, the sRGB curve."""
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    scene = np.array([s * s / 3 if s <= 0.5 else (np.exp((s - c) / a) + b) / 12 for s in signal])
    return _display_to_srgb(1000 * (scene @ [0.2627, 0.6780, 0.0593]) ** 0.2 * scene / 203)


def _display_to_srgb(display: np.ndarray) -> np.ndarray:
    """Display light relative to 203 cd/m2 (BT.2020) -> sRGB: BT.2087's matrix, the roll-off above 0.8, the curve."""
    bt709 = np.maximum(
        np.array([[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]]) @ display, 0
    )
    luma = bt709 @ [0.2126, 0.7152, 0.0722]
    rolled = luma if luma <= 0.8 else 0.8 + 0.2 * (1 - np.exp(-(luma - 0.8) / 0.2))
    sdr = np.clip(bt709 * rolled / luma, 0, 1)
    return np.round(255 * np.where(sdr <= 0.0031308, 12.92 * sdr, 1.055 * sdr ** (1 / 2.4) - 0.055))


def _pq_to_srgb(signal: np.ndarray) -> np.ndarray:
    """The slow reference for one PQ BT.2020 colour: the ST 2084 EOTF, then as for HLG."""
    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    power = signal ** (1 / m2)
    return _display_to_srgb(10000 * (np.maximum(power - c1, 0) / (c2 - c3 * power)) ** (1 / m1) / 203)


@pytest.mark.slow
@pytest.mark.parametrize("transfer", ["HLG", "PQ"])
def test_an_hdr_clip_is_tone_mapped_to_sdr(transfer, random_model, tmp_path):
    """An iPhone-style HDR clip (HEVC Main 10, BT.2020, HLG) and an HDR10 one (PQ). Flat patches of known signal."""
    import av

    from neopolyp_hf.video.sources import probe_video, read_frames

    patches = np.array([[0.75, 0.75, 0.75], [0.5, 0.5, 0.5], [0.6, 0.3, 0.3], [0.3, 0.6, 0.3]])
    signal = np.zeros((64, 128, 3))
    for index, value in enumerate(patches):
        signal[:, 32 * index : 32 * (index + 1)] = value
    clip = tmp_path / "hdr.mp4"
    container = av.open(str(clip), "w")
    stream = container.add_stream("libx265", rate=25)
    stream.width, stream.height, stream.pix_fmt = 128, 64, "yuv420p10le"
    curve = "arib-std-b67" if transfer == "HLG" else "smpte2084"
    stream.options = {"x265-params": f"log-level=error:colorprim=bt2020:transfer={curve}:colormatrix=bt2020nc:crf=8"}
    for _ in range(3):
        frame = av.VideoFrame.from_ndarray(np.round(signal * 65535).astype(np.uint16), format="rgb48le")
        for packet in stream.encode(frame.reformat(format="yuv420p10le", dst_colorspace="bt2020")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    assert probe_video(clip).hdr == transfer
    rgb = next(iter(read_frames(clip))).rgb
    for index, value in enumerate(patches):
        expected = _bt2100_hlg_to_srgb(value) if transfer == "HLG" else _pq_to_srgb(value)
        assert np.abs(rgb[32, 32 * index + 16].astype(int) - expected).max() <= 3, (value, rgb[32, 32 * index + 16])
    if transfer == "HLG":
        assert rgb[32, 16].min() >= 240  # HLG reference white (75 %) comes out as SDR white, not washed-out grey
    written = __import__("neopolyp_hf.video.pipeline", fromlist=["x"]).write_video_outputs(
        random_model, clip, output_video=tmp_path / "overlay.mp4"
    )
    assert written.frames == 3


def test_a_full_disk_during_the_first_onnx_export_is_named(model_dir, tmp_path, monkeypatch):
    from neopolyp_hf import ModelSourceError
    from neopolyp_hf.onnx.loading import load_segmenter

    with small_disk(tmp_path / "cache", "300k") as disk:  # the export is several MB
        monkeypatch.setenv("NEOPOLYP_CACHE", str(disk))
        with pytest.raises(ModelSourceError, match=r"no space left on device while writing '.*\.onnx'"):
            load_segmenter(str(model_dir))
        assert [p for p in disk.rglob("*") if p.is_file()] == []  # no half-made export to be read back later


SWAP_KILLED = """
import os, signal, sys
from pathlib import Path
from neopolyp_hf import atomic
renames = []
real_replace = os.replace
def replace(src, dst):
    real_replace(src, dst)
    renames.append(dst)
    if len(renames) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
atomic.os.replace = replace
atomic.replace_dir_atomic(Path(sys.argv[1]) / "best.tmp", Path(sys.argv[1]) / "best")
"""


@pytest.mark.parametrize("killed_after_renames", [1, 2])
def test_a_folder_swap_killed_between_its_renames_is_recovered(killed_after_renames, tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "model.txt").write_text("old")
    (tmp_path / "best.tmp").mkdir()
    (tmp_path / "best.tmp" / "model.txt").write_text("new")
    run = subprocess.run([sys.executable, "-c", SWAP_KILLED, str(tmp_path), str(killed_after_renames)])
    assert run.returncode == -signal.SIGKILL
    # Killed after the first rename only the old folder is left, under its .old name; after the second both are.
    assert (tmp_path / "best").exists() == (killed_after_renames == 2)
    assert (tmp_path / "best.old").exists()
    from neopolyp_hf.atomic import recover_dir, replace_dir_atomic

    recovered = recover_dir(tmp_path / "best")
    expected = "old" if killed_after_renames == 1 else "new"
    assert (recovered / "model.txt").read_text() == expected and not (tmp_path / "best.old").exists()
    if killed_after_renames == 1:  # the interrupted swap can simply be done again
        replace_dir_atomic(tmp_path / "best.tmp", tmp_path / "best")
        assert (tmp_path / "best" / "model.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
