"""DICOM in, DICOM SEG out, and no patient field in any output. Every object is made here with pydicom,
Pillow and PyAV, each with planted patient fields (helpers.PATIENT_FIELDS); no real patient data."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    PATIENT_FIELDS,
    SECONDARY_CAPTURE,
    corner,
    dicom_object,
    dicom_still,
    dicom_video,
    encode,
    load_script,
    marked_frame,
)
from PIL import Image

from neopolyp_hf import ImageLoadError, load_image
from neopolyp_hf.errors import VideoLoadError

predict_script = load_script("predict")
H264_MP4, H264_FRAGMENTABLE = "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.102.1"
MPEG2, HEVC = "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.107"  # MPEG-2 Main Profile, HEVC Main Profile


def run_predict(*argv, capsys=None):
    return predict_script.main(predict_script.get_args_parser().parse_args([str(a) for a in argv]))


@pytest.mark.parametrize(
    ("layout", "sop_class", "tolerance"),
    [
        ("explicit", None, 0),
        ("implicit", None, 0),
        ("planar", None, 0),
        ("ybr", None, 2),
        ("jpeg", None, None),  # against the same JPEG decoded by Pillow
        ("explicit", SECONDARY_CAPTURE, 0),
    ],
)
def test_a_dicom_still_is_the_picture_a_viewer_shows(layout, sop_class, tolerance, random_model, tmp_path):
    rgb = marked_frame(96, 64)
    rgb[..., 0] = np.linspace(0, 200, 96, dtype=np.uint8)[None]  # colour that a wrong YBR or planar read would move
    path = dicom_still(tmp_path / "still.dcm", rgb, layout=layout, **({"sop_class": sop_class} if sop_class else {}))
    frame = load_image(path)
    expected = rgb
    if tolerance is None:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
        expected, tolerance = np.asarray(Image.open(buffer).convert("RGB")), 0
    assert frame.shape == rgb.shape and corner(frame) == "top-left"
    assert np.abs(frame.astype(int) - expected).max() <= tolerance
    Image.fromarray(expected if tolerance == 0 else frame).save(tmp_path / "same.png")  # YBR rounds by a level
    np.testing.assert_array_equal(random_model.predict(path).mask, random_model.predict(tmp_path / "same.png").mask)
    assert load_image(path.read_bytes()).shape == rgb.shape  # bytes too (an upload)


def test_what_is_not_a_colour_still_is_refused_by_name(tmp_path):
    rgb = marked_frame(32, 32)
    cases = {
        "report.dcm": ({"PixelData": None}, "holds no Pixel Data"),
        "grey.dcm": ({"PhotometricInterpretation": "MONOCHROME2", "SamplesPerPixel": 1}, "MONOCHROME2"),
        "palette.dcm": ({"PhotometricInterpretation": "PALETTE COLOR", "SamplesPerPixel": 1}, "PALETTE COLOR"),
    }
    for name, (fields, reason) in cases.items():
        path = dicom_still(tmp_path / name, rgb, **fields)
        with pytest.raises(ImageLoadError, match=rf"{name}'.*{reason}"):
            load_image(path)
    directory = dicom_object(tmp_path / "DICOMDIR.dcm", "1.2.840.10008.1.3.10", "1.2.840.10008.1.2.1", 1, 1)
    with pytest.raises(ImageLoadError, match="is a DICOMDIR"):
        load_image(directory)
    htj2k = dicom_object(
        tmp_path / "htj2k.dcm",
        "1.2.840.10008.5.1.4.1.1.77.1.1",
        "1.2.840.10008.1.2.4.201",
        32,
        32,
        PixelData=__import__("pydicom.encaps").encaps.encapsulate([b"\xff\x4f\xff\x51" + bytes(60)]),
    )
    with pytest.raises(
        ImageLoadError,
        match=r"HTJ2K Lossless \(1.2.840.10008.1.2.4.201\).*decoder reads: pip install pylibjpeg pylibjpeg-openjpeg",
    ):
        load_image(htj2k)
    whole = dicom_still(tmp_path / "whole.dcm", rgb).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[: len(whole) - 600])
    with pytest.raises(ImageLoadError, match="cut.dcm'.*(truncated|corrupt)"):
        load_image(tmp_path / "cut.dcm")
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    (tmp_path / "photo.dcm").write_bytes((tmp_path / "photo.png").read_bytes())
    with pytest.raises(ImageLoadError, match="'.*photo.dcm' has a DICOM name but is not a DICOM file"):
        load_image(tmp_path / "photo.dcm")


@pytest.fixture(scope="module")
def clip_frames_rgb():
    rng = np.random.default_rng(3)
    base = rng.integers(40, 200, (64, 96, 3), dtype=np.uint8)
    return [np.roll(base, 3 * index, axis=1) for index in range(12)]


def raw_h264(frames, path: Path) -> bytes:
    """A bare H.264 elementary stream (Annex B), as some converters store it: no container, no frame times."""
    return elementary_stream(frames, path, "libx264", "h264")


def timeline(model_dir: Path, video: Path, out: Path) -> list[dict]:
    run_predict("--model", model_dir, "--video", video, "--timeline", out)
    with open(out) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture()
def model_dir(random_model, tmp_path) -> Path:
    random_model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def elementary_stream(frames, path: Path, codec: str, muxer: str) -> bytes:
    """A bare elementary stream of `codec` (mpeg2video, libx265), as converters store MPEG-2 and HEVC."""
    import av

    container = av.open(str(path), "w", format=muxer)
    stream = container.add_stream(codec, rate=10)
    stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
    if codec == "libx265":
        stream.options = {"x265-params": "log-level=error"}
    for rgb in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mp4", "elementary", "fragmentable", "mpeg2", "hevc"])
def test_dicom_video_gives_the_timeline_of_the_same_clip(variant, clip_frames_rgb, model_dir, tmp_path):
    mp4 = encode(tmp_path / "clip.mp4", clip_frames_rgb, fps=10)
    if variant == "mp4":
        stream, syntax = mp4.read_bytes(), H264_MP4
    elif variant == "mpeg2":
        stream, syntax = elementary_stream(clip_frames_rgb, tmp_path / "clip.m2v", "mpeg2video", "mpeg2video"), MPEG2
    elif variant == "hevc":
        stream, syntax = elementary_stream(clip_frames_rgb, tmp_path / "clip.hevc", "libx265", "hevc"), HEVC
    else:
        stream = raw_h264(clip_frames_rgb, tmp_path / "clip.h264")
        syntax = H264_FRAGMENTABLE if variant == "fragmentable" else H264_MP4
    video = dicom_video(tmp_path / "procedure.dcm", stream, 64, 96, len(clip_frames_rgb), syntax, FrameTime=100.0)
    expected = timeline(model_dir, mp4, tmp_path / "mp4.csv")
    got = timeline(model_dir, video, tmp_path / "dicom.csv")
    assert len(got) == len(expected) == 12
    assert [row["time_s"] for row in got] == [row["time_s"] for row in expected]  # 0.1 s apart: the DICOM's rate
    if variant == "mp4":  # the same bytes decoded: the same rows
        assert got == expected
    with pytest.raises(SystemExit, match="for DICOM stills only: highdicom makes a multi-frame SEG only over a"):
        run_predict("--model", model_dir, "--video", video, "--timeline", tmp_path / "t.csv", "--dicom-seg", tmp_path)


def test_a_multi_frame_uncompressed_object_is_read_frame_by_frame(clip_frames_rgb, tmp_path):
    from neopolyp_hf.video.sources import probe_video, read_frames

    pixels = np.stack(clip_frames_rgb[:5]).tobytes()
    path = dicom_object(
        tmp_path / "frames.dcm",
        "1.2.840.10008.5.1.4.1.1.7.4",
        "1.2.840.10008.1.2.1",
        64,
        96,
        PixelData=pixels,
        NumberOfFrames=5,
        FrameTimeVector=[0, 40, 40, 80, 40],
    )
    frames = list(read_frames(path))
    assert [round(f.time, 3) for f in frames] == [0.0, 0.04, 0.08, 0.16, 0.2]
    for frame, rgb in zip(frames, clip_frames_rgb[:5], strict=True):
        np.testing.assert_array_equal(frame.rgb, rgb)
    assert probe_video(path).width == 96
    with pytest.raises(VideoLoadError, match="over the limit of 0.1 s"):
        probe_video(path, max_seconds=0.1)


def test_a_seg_round_trips_the_mask_and_references_its_source(model_dir, tmp_path):
    import pydicom

    from neopolyp_hf import NeoPolypUNet
    from neopolyp_hf.dicom_seg.writer import read_seg_mask

    images = tmp_path / "images"
    images.mkdir()
    still = dicom_still(images / "frame.dcm", marked_frame(96, 64), layout="jpeg")
    run_predict(
        "--model", model_dir, "--images", images, "--output", tmp_path / "s.csv", "--dicom-seg", tmp_path / "seg"
    )
    source = pydicom.dcmread(still)
    (seg,) = (tmp_path / "seg").iterdir()
    assert seg.name == f"{source.SOPInstanceUID}.seg.dcm"
    mask, info = read_seg_mask(seg)
    np.testing.assert_array_equal(mask, NeoPolypUNet.from_pretrained(model_dir).predict(still).mask)
    assert info["labels"] == {1: "neoplastic polyp", 2: "non-neoplastic polyp"}
    assert info["study"] == source.StudyInstanceUID and info["instances"] == [source.SOPInstanceUID]
    assert info["series"] == [source.SeriesInstanceUID]


@pytest.mark.slow
def test_no_patient_field_reaches_an_output_or_a_log(clip_frames_rgb, model_dir, tmp_path, capfd):
    images = tmp_path / "images"
    images.mkdir()
    dicom_still(images / "a.dcm", marked_frame(96, 64))
    dicom_still(images / "b.dcm", marked_frame(96, 64), layout="jpeg")
    out = tmp_path / "out"
    run_predict(
        "--model",
        model_dir,
        "--images",
        images,
        "--output",
        out / "s.csv",
        "--masks-dir",
        out / "masks",
        "--save-probabilities",
        out / "probabilities",
        "--dicom-seg",
        tmp_path / "seg",
    )
    stream = raw_h264(clip_frames_rgb, tmp_path / "clip.h264")
    video = dicom_video(tmp_path / "procedure.dcm", stream, 64, 96, 12, H264_MP4, FrameTime=100.0)
    run_predict(
        "--model",
        model_dir,
        "--video",
        video,
        "--output-video",
        out / "overlay.mp4",
        "--timeline",
        out / "timeline.csv",
        "--tracks",
        out / "tracks.csv",
        "--save-masks",
        out / "frames",
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cut.dcm").write_bytes(video.read_bytes()[:3000])
    with pytest.raises(SystemExit) as refused:
        run_predict("--model", model_dir, "--video", broken / "cut.dcm", "--timeline", out / "t2.csv")
    logs = capfd.readouterr()
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) >= 2 + 2 + 12 + 4
    planted = [value.encode() for value in PATIENT_FIELDS.values()] + [b"Doe", b"Jane"]
    for path in written:
        content = path.read_bytes()
        assert not [value for value in planted if value in content], path
        assert not [value for value in planted if value.decode() in path.name]
    for text in (logs.out, logs.err, str(refused.value)):
        assert not [value for value in planted if value.decode() in text]


def test_a_multi_frame_jpeg_object_is_read_frame_by_frame(clip_frames_rgb, tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    from neopolyp_hf.video.sources import read_frames

    jpegs, decoded = [], []
    for rgb in clip_frames_rgb[:4]:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
        jpegs.append(buffer.getvalue())
        decoded.append(np.asarray(Image.open(io.BytesIO(jpegs[-1])).convert("RGB")))
    path = dicom_object(
        tmp_path / "jpegs.dcm",
        "1.2.840.10008.5.1.4.1.1.7.4",
        JPEGBaseline8Bit,
        64,
        96,
        PixelData=encapsulate(jpegs),
        NumberOfFrames=4,
        PhotometricInterpretation="YBR_FULL_422",
        CineRate=25,
    )
    frames = list(read_frames(path))
    assert [round(f.time, 3) for f in frames] == [0.0, 0.04, 0.08, 0.12]
    for frame, expected in zip(frames, decoded, strict=True):  # the same JPEG decoded: within a level (YBR rounding)
        assert np.abs(frame.rgb.astype(int) - expected).max() <= 1


def test_each_refusal_through_the_cli_names_the_file_and_the_problem(model_dir, tmp_path):
    rgb = marked_frame(32, 32)
    cases = {
        "report.dcm": ({"PixelData": None}, "holds no Pixel Data"),
        "grey.dcm": ({"PhotometricInterpretation": "MONOCHROME2", "SamplesPerPixel": 1}, "MONOCHROME2"),
    }
    for name, (fields, reason) in cases.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        dicom_still(folder / name, rgb, **fields)
        with pytest.raises(SystemExit, match=rf"{name}'.*{reason}"):
            run_predict("--model", model_dir, "--images", folder, "--output", tmp_path / "s.csv")
        with pytest.raises(SystemExit, match=rf"{name}'.*{reason}"):
            run_predict("--model", model_dir, "--video", folder / name, "--timeline", tmp_path / "t.csv")
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "t.csv").exists()


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's (dicom3tools, DICOM's reference validator) error lines for a file."""
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian: apt-get install dicom3tools; make test installs it as root)")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize(
    "fields",
    [
        {},  # a clean still
        {"PatientBirthDate": "1958-02-14", "StudyDate": "2024/05/01", "PatientSex": "female"},  # as archives hold them
        {"PatientOrientation": ["A", "F"]},
        {"SOPInstanceUID": "../../escaped/x"},
    ],
    ids=["clean", "malformed-values", "orientation", "traversal-uid"],
)
def test_every_seg_validates_and_copies_no_equipment_nor_bad_value(model_dir, tmp_path, fields, capfd):
    import pydicom
    from highdicom.seg import segread

    images = tmp_path / "images"
    images.mkdir()
    still = dicom_still(images / "frame.dcm", marked_frame(96, 64), **fields)
    if "SOPInstanceUID" in fields:  # the File Meta names the same instance
        dataset = pydicom.dcmread(still)
        dataset.file_meta.MediaStorageSOPInstanceUID = fields["SOPInstanceUID"]
        dataset.save_as(still)
    seg_dir = tmp_path / "seg"
    run_predict("--model", model_dir, "--images", images, "--output", tmp_path / "s.csv", "--dicom-seg", seg_dir)
    (seg_file,) = [p for p in tmp_path.rglob("*.seg.dcm")]
    assert seg_file.parent == seg_dir  # never outside --dicom-seg
    errors = dciodvfy_errors(seg_file)
    if "SOPInstanceUID" in fields:  # the SEG must reference its source's (invalid) UID: the only error allowed
        assert seg_file.name.startswith("uid-")
        assert all("escaped/x" in line or "invalid data values" in line for line in errors)
    else:
        assert errors == []
    seg = segread(seg_file)
    text = str(seg)
    for value in ("St Elsewhere Hospital", "1958-02-14", "2024/05/01", str(model_dir)):
        assert value not in text
    (algorithm,) = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert len(algorithm.AlgorithmVersion) == 64  # the weights' SHA-256 for a local model, whole
    assert seg.ManufacturerModelName == "local model"
    out, err = capfd.readouterr()
    assert "1958-02-14" not in out + err and str(model_dir) not in err


def test_a_seg_names_a_hub_model_by_its_repo_id_and_a_local_one_by_no_path(tmp_path):
    import pydicom

    from neopolyp_hf.dicom_seg.writer import build_seg

    still = dicom_still(tmp_path / "frame.dcm", marked_frame(96, 64))
    source, mask = pydicom.dcmread(still), np.zeros((64, 96), np.uint8)
    commit = "0123456789abcdef0123456789abcdef01234567"
    hub = build_seg(source, mask, "you/neopolyp", commit, "1.0", "f" * 64)
    assert hub.ManufacturerModelName == "you/neopolyp"
    assert hub.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == commit
    for local in (str(tmp_path), "/home/jane.doe/models/best", "../models/best"):
        assert build_seg(source, mask, local, "", "1.0", "f" * 64).ManufacturerModelName == "local model"


def test_a_dicom_video_without_frame_time_is_timed_by_its_own_stream(clip_frames_rgb, tmp_path):
    """No Frame Time, Frame Time Vector or Cine Rate, and an H.264 stream that says 10 frames/s: frame 11 is at
    1.1 s, not at FFmpeg's default 25 frames/s (0.44 s)."""
    from neopolyp_hf.video.sources import open_video

    stream = raw_h264(clip_frames_rgb, tmp_path / "clip.h264")
    video = dicom_video(tmp_path / "procedure.dcm", stream, 64, 96, len(clip_frames_rgb), H264_MP4)
    with open_video(video) as source:
        assert source.info.timing == "stream" and source.info.fps == pytest.approx(10.0)
        times = [frame.time for frame in source.frames()]
    assert times[11] == pytest.approx(1.1)


def test_nothing_times_the_frames_then_their_times_are_unknown_never_assumed(clip_frames_rgb, model_dir, tmp_path):
    from neopolyp_hf.video.sources import open_video

    pixels = np.stack(clip_frames_rgb[:5]).tobytes()
    common = ("1.2.840.10008.5.1.4.1.1.7.4", "1.2.840.10008.1.2.1", 64, 96)
    path = dicom_object(tmp_path / "frames.dcm", *common, PixelData=pixels, NumberOfFrames=5)
    with open_video(path) as source:
        assert source.info.timing == "unknown" and source.info.fps is None and source.info.duration_s is None
        assert [frame.time for frame in source.frames()] == [None] * 5
    rows = timeline(model_dir, path, tmp_path / "timeline.csv")
    assert [row["time_s"] for row in rows] == [""] * 5  # said to be unknown in the timeline
    # A Frame Time Vector of zeros says nothing either: no ZeroDivisionError, no made-up rate.
    zeros = dicom_object(tmp_path / "zeros.dcm", *common, PixelData=pixels, NumberOfFrames=5, FrameTimeVector=[0] * 5)
    with open_video(zeros) as source:
        assert source.info.timing == "unknown"


def test_a_dicom_video_faster_than_25_fps_is_limited_by_its_own_times(tmp_path):
    """60 frames at 50 frames/s last 1.2 s: taken against a 2 s limit (FFmpeg's 25 frames/s would say 2.4 s);
    a message about the stream names the user's file, never the temporary stream file."""
    from neopolyp_hf.video.sources import open_video

    frames = [np.full((64, 96, 3), (index * 4) % 255, np.uint8) for index in range(60)]
    stream = raw_h264(frames, tmp_path / "clip.h264")
    video = dicom_video(tmp_path / "fast.dcm", stream, 64, 96, 60, H264_MP4, FrameTime=20.0)
    with open_video(video, max_seconds=2.0) as source:
        assert source.info.duration_s == pytest.approx(1.2) and source.info.timing == "dicom"
        times = [frame.time for frame in source.frames()]
    assert len(times) == 60 and times[-1] == pytest.approx(1.18)
    with pytest.raises(VideoLoadError, match="'fast.dcm' lasts 1.2 s, over the limit of 1 s"):
        open_video(video, max_seconds=1.0)
    broken = dicom_video(tmp_path / "broken.dcm", b"\x00\x00\x00\x01" + b"\xff" * 400, 64, 96, 60, H264_MP4)
    with pytest.raises(VideoLoadError) as refused, open_video(broken) as source:
        list(source.frames())
    assert "'broken.dcm'" in str(refused.value) and "stream.h264" not in str(refused.value)


def peak_bytes(call) -> int:
    """Python's peak allocation while `call()` runs (tracemalloc; pydicom's and zlib's buffers are Python bytes)."""
    import tracemalloc

    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        call()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_a_deflated_dicom_is_inflated_under_a_bound_its_header_sets(tmp_path):
    """Deflate reaches about 1000:1: a frame over the pixel limit is refused as soon as the header is inflated,
    and pixel data past what the header announces is refused while inflating; memory stays small either way."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    side = 3000  # 27 MB of zeros: deflated to a few tens of kB
    large = dicom_object(
        tmp_path / "large.dcm", SECONDARY_CAPTURE, DeflatedExplicitVRLittleEndian, side, side,
        PixelData=bytes(side * side * 3),
    )  # fmt: skip
    assert large.stat().st_size < 100_000

    def refuse(path, match, max_pixels):
        with pytest.raises(ImageLoadError, match=match):
            load_image(path, max_pixels=max_pixels)

    peak = peak_bytes(lambda: refuse(large, "is 3000x3000 pixels, over the limit of 10,000 pixels", 100 * 100))
    assert peak < 8 << 20  # the header's size was enough: the 27 MB were never inflated
    lying = dicom_object(
        tmp_path / "lying.dcm", SECONDARY_CAPTURE, DeflatedExplicitVRLittleEndian, 100, 100,
        PixelData=bytes(side * side * 3),
    )  # fmt: skip
    peak = peak_bytes(lambda: refuse(lying, "lying.dcm' inflates to more than 16 MB", 100 * 100))
    assert peak < 40 << 20  # bounded by what the header announces, not by what the file inflates to
    small = dicom_object(
        tmp_path / "small.dcm", SECONDARY_CAPTURE, DeflatedExplicitVRLittleEndian, 48, 64,
        PixelData=marked_frame(64, 48).tobytes(),
    )  # fmt: skip
    np.testing.assert_array_equal(load_image(small), marked_frame(64, 48))  # a deflated still still reads


def test_a_dicom_video_is_copied_out_a_fragment_at_a_time(tmp_path):
    """Memory while opening a DICOM video stays far under its file's size (the stream is not read whole)."""
    from pydicom.encaps import encapsulate

    from neopolyp_hf.video.dicom import _copy_stream

    fragments = [bytes([index % 251]) * (1 << 20) for index in range(24)]  # 24 MB in 1 MB fragments
    path = dicom_object(
        tmp_path / "long.dcm", "1.2.840.10008.5.1.4.1.1.77.1.1.1", H264_MP4, 64, 96,
        PixelData=encapsulate(fragments), NumberOfFrames=10, PhotometricInterpretation="YBR_PARTIAL_420",
    )  # fmt: skip
    peak = peak_bytes(lambda: _copy_stream(path, "'long.dcm'", tmp_path / "stream.h264"))
    assert (tmp_path / "stream.h264").read_bytes() == b"".join(fragments)
    assert peak < 6 << 20  # about one fragment, not 24 MB


def test_a_dicom_stills_icc_profile_is_converted_as_a_pngs_is(tmp_path):
    from helpers import DISPLAY_P3, icc_profile

    rgb = marked_frame(96, 64)
    rgb[..., 1] = np.linspace(0, 255, 96, dtype=np.uint8)[None]
    profile = icc_profile(*DISPLAY_P3, gamma=2.2, name="display-p3")
    Image.fromarray(rgb).save(tmp_path / "frame.png", icc_profile=profile)
    path = dicom_still(tmp_path / "frame.dcm", rgb, ICCProfile=profile)
    converted = load_image(path)
    np.testing.assert_array_equal(converted, load_image(tmp_path / "frame.png"))
    assert np.abs(converted.astype(int) - rgb).max() > 5  # the profile moved the colours
