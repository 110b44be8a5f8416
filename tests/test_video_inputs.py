"""Clips and files as recorders, phones and browsers write them: the picture the user saw, at the time
it was recorded, or a clear refusal. Every input is made here, at test time."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from helpers import ROOT, corner, cover_art_memo, encode, marked_frame

from neopolyp_hf import NeoPolypUNet
from neopolyp_hf.errors import VideoLoadError

av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")

from neopolyp_hf.video.io import VideoWriter  # noqa: E402
from neopolyp_hf.video.pipeline import clip_legend, write_video_outputs  # noqa: E402
from neopolyp_hf.video.sources import probe_video, read_frames  # noqa: E402


@pytest.mark.parametrize(("rotation", "seen_at"), [(-90, "top-right"), (90, "bottom-left"), (180, "bottom-right")])
def test_a_rotated_phone_clip_is_segmented_and_written_upright(tmp_path, trained_model_dir, rotation, seen_at):
    # Large enough that the overlay's legend (bottom-left) covers only part of a corner's mark.
    clip = encode(tmp_path / "phone.mp4", [marked_frame(640, 480)] * 6, rotation=rotation)
    frames = list(read_frames(clip))
    shape = (480, 640) if rotation == 180 else (640, 480)  # height, width as the viewer sees them
    assert frames[0].rgb.shape[:2] == shape and corner(frames[0].rgb) == seen_at
    model = NeoPolypUNet.from_pretrained(trained_model_dir / "best")
    out = write_video_outputs(model, clip, output_video=tmp_path / "o.mp4", masks_dir=tmp_path / "m")
    written = next(iter(read_frames(out.files["video"])))
    legend_rows = clip_legend(written.rgb, model.config).strip.shape[0]  # the legend covers the bottom-left
    assert written.rgb.shape[:2] == shape and corner(written.rgb, legend_rows) == seen_at  # upright, no metadata
    assert next(av.open(str(out.files["video"])).decode(video=0)).rotation == 0
    from neopolyp_hf import decode_mask

    mask = decode_mask(np.asarray(__import__("PIL.Image").Image.open(sorted((tmp_path / "m").iterdir())[0])))
    assert mask.shape == shape


def test_non_square_pixels_are_shown_square(tmp_path):
    clip = encode(tmp_path / "anamorphic.mp4", [marked_frame(160, 120)] * 4, aspect=Fraction(2, 1))
    assert (probe_video(clip).width, probe_video(clip).height) == (320, 120)
    assert next(iter(read_frames(clip))).rgb.shape[:2] == (120, 320)


@pytest.mark.parametrize("start_s", [100.0, 7.5])
def test_times_run_from_the_first_frame_of_a_cut_segment(tmp_path, trained_model_dir, start_s):
    frames = [marked_frame(160, 128)] * 45  # 3 s at 15 frames/s
    clip = encode(tmp_path / "segment.ts", frames, codec="mpeg2video", start_s=start_s, format="mpegts")
    times = [f.time for f in read_frames(clip, max_seconds=4)]  # the limit is the clip's duration
    assert times[0] == 0.0 and times[-1] == pytest.approx(44 / 15, abs=0.01)
    model = NeoPolypUNet.from_pretrained(trained_model_dir / "best")
    out = write_video_outputs(model, clip, timeline=tmp_path / "t.csv", max_seconds=4)
    assert out.timeline[0][1] == "0.000" and float(out.timeline[-1][1]) == pytest.approx(44 / 15, abs=0.01)


def test_a_clip_whose_frame_size_changes_is_written_undistorted(tmp_path):
    wide, tall = marked_frame(320, 240), marked_frame(240, 320)
    writer = VideoWriter(tmp_path / "turned.mp4", fps=10)
    for rgb in [wide] * 3 + [tall] * 3:
        writer.write(rgb)
    path = writer.close()
    frames = [f.rgb for f in read_frames(path)]
    assert all(f.shape[:2] == (240, 320) for f in frames)
    last = frames[-1].astype(int)
    assert last[:, :40].mean() < 10 and last[:, -40:].mean() < 10  # black bars beside the fitted picture
    left = (320 - 180) // 2  # the 240x320 frame fitted into 240 rows is 180 wide, centred
    assert last[:40, left + 5 : left + 35].mean() > 200  # its mark, still in its top-left, still square


def test_files_that_hold_no_video_are_refused_by_name(tmp_path):
    with pytest.raises(VideoLoadError, match=r"'memo.mp3' has no video stream \(only a cover picture\)"):
        probe_video(cover_art_memo(tmp_path / "memo.mp3"))
    still = tmp_path / "still.mp4"
    still.write_bytes(__import__("cv2").imencode(".png", marked_frame(64, 48))[1].tobytes())
    with pytest.raises(VideoLoadError, match=r"'still.mp4' is a still image"):
        probe_video(still)


@pytest.mark.parametrize(("width", "height"), [(64, 1), (1, 64), (15, 200)])
def test_degenerate_sizes_are_refused_and_leave_nothing_behind(tmp_path, trained_model_dir, width, height):
    clip = encode(tmp_path / "thin.avi", [marked_frame(width, height)] * 3, codec="rawvideo", pix_fmt="rgb24")
    with pytest.raises(VideoLoadError, match=rf"{width}x{height} frames: a side under the minimum of 16 px"):
        probe_video(clip)
    if (width, height) != (64, 1):
        return  # the CLI once: the same refusal
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "train" / "predict.py"), "--model", str(trained_model_dir / "best")]
    command += ["--video", str(clip), "--output-video", str(out / "o.mp4"), "--save-masks", str(out / "masks")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{width}x{height} frames" in result.stderr and "thin.avi" in result.stderr
    assert not out.exists()  # no empty folder, no half-written file


def test_odd_sizes_above_the_minimum_still_work(tmp_path, trained_model_dir):
    clip = encode(tmp_path / "odd.avi", [marked_frame(33, 17)] * 3, codec="rawvideo", pix_fmt="rgb24")
    model = NeoPolypUNet.from_pretrained(trained_model_dir / "best")
    out = write_video_outputs(model, clip, output_video=tmp_path / "odd.mp4")
    assert out.frames == 3 and probe_video(out.files["video"]).width == 32


def test_names_that_ffmpeg_would_read_as_urls_are_files(tmp_path, trained_model_dir, small_clip):
    names = ["2024-05-01T10:32:05.mp4", "-a|b c é.mp4"]  # a protocol-like prefix; a dash, pipe, space, non-ASCII
    for name in names:
        (tmp_path / name).write_bytes(small_clip.read_bytes())
        command = [sys.executable, str(ROOT / "train" / "predict.py"), "--model", str(trained_model_dir / "best")]
        command += ["--video", f"./{name}" if name.startswith("-") else name]
        command += ["--output-video", f"out/{name.removesuffix('.mp4')}_overlay.mp4"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=os.environ)
        assert result.returncode == 0, result.stderr[-1500:]
        assert probe_video(tmp_path / "out" / f"{name.removesuffix('.mp4')}_overlay.mp4").codec == "h264"


def test_without_pyav_the_hint_names_what_installs_from_a_checkout(monkeypatch):
    from neopolyp_hf.video.io import _av

    monkeypatch.setitem(sys.modules, "av", None)  # as if the video extra were not installed
    with pytest.raises(ImportError, match=r"in a checkout of NeoPolyp, pip install '\.\[video\]'"):
        _av()
