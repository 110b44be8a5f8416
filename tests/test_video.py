"""Video: decoding every common format, clear errors for bad clips, tracking, the pipeline and the CLI."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, load_script
from PIL import Image

from neopolyp_hf import NeoPolypUNet
from neopolyp_hf.classes import CLASS_COLORS, CLASS_NAMES, NEOPLASTIC, NON_NEOPLASTIC
from neopolyp_hf.errors import VideoLoadError
from neopolyp_hf.lesions import Lesion, find_lesions
from neopolyp_hf.masks import decode_mask
from neopolyp_hf.training.clips import clip_frames, write_clip
from neopolyp_hf.video.io import VideoWriter
from neopolyp_hf.video.pipeline import TIMELINE_HEADERS, TRACK_HEADERS, segment_video, write_video_outputs
from neopolyp_hf.video.sources import probe_video, read_frames
from neopolyp_hf.video.tracking import LesionTracker, is_scene_cut, scene_thumbnail


@pytest.fixture(scope="module")
def frames(clip_scenes):
    return [frame for _, frame, _ in clip_frames(clip_scenes, 6, (160, 120))]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, codec, options",
    [
        ("clip.webm", "vp9", {}),
        ("clip.av1.mp4", "av1", {}),
        ("clip.avi", "mjpeg", {}),
        ("audio.mp4", "h264", {"audio": True}),
        ("vfr.mp4", "h264", {"variable_rate": True}),
    ],
)
def test_common_formats_decode_frame_by_frame(frames, tmp_path, name, codec, options):
    path = write_clip(tmp_path / name, frames, fps=10.0, **options)
    info = probe_video(path)
    assert (info.width, info.height) == (160, 120) and codec in info.codec.replace("libdav1d", "av1")
    decoded = list(read_frames(path))
    assert len(decoded) == len(frames)  # the audio track is dropped, not decoded as frames
    assert np.abs(decoded[3].rgb.astype(int) - frames[3].astype(int)).mean() < 12  # lossy, but the same picture
    times = [f.time for f in decoded]
    assert times == sorted(times) and times[0] == 0.0
    if options.get("variable_rate"):
        gaps = np.round(np.diff(times), 3)
        assert set(gaps.tolist()) == {0.1, 0.2}  # variable frame rate: the times are the frames' own


@pytest.mark.slow
def test_bad_videos_get_errors_that_name_the_problem(frames, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(VideoLoadError, match="'notes.mp4' is not a readable video"):
        probe_video(text)
    good = write_clip(tmp_path / "good.mp4", frames, fps=10.0)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VideoLoadError, match="truncated.mp4"):
        list(read_frames(truncated))
    with pytest.raises(VideoLoadError, match="over the limit of 10,000 pixels"):
        probe_video(good, max_pixels=10_000)
    with pytest.raises(VideoLoadError, match="lasts 1.2 s, over the limit of 1 s"):
        probe_video(good, max_seconds=1)
    with pytest.raises(VideoLoadError, match="does not exist"):
        probe_video(tmp_path / "missing.mp4")


def test_a_clip_without_frames_is_refused(tmp_path):
    import av

    path = tmp_path / "empty.mp4"
    with av.open(str(path), mode="w") as container:  # a header, and not one frame
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    with pytest.raises(VideoLoadError, match="'empty.mp4' has no video stream: no frames to segment"):
        list(read_frames(path))


@pytest.mark.slow
def test_the_writer_makes_browser_h264_atomically(frames, tmp_path):
    import av

    path = tmp_path / "out.mp4"
    with VideoWriter(path, fps=10.0) as writer:
        for frame in frames:
            writer.write(frame[:119, :159])  # odd sizes lose a row and a column
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (158, 118)
    failing = tmp_path / "failing.mp4"
    with pytest.raises(RuntimeError), VideoWriter(failing, fps=10.0) as writer:
        writer.write(frames[0])
        raise RuntimeError("stopped half way")
    assert not failing.exists() and not list(tmp_path.glob(".failing.mp4*"))  # nothing half-written


def lesion(label, area, p, bbox=(0, 0, 1, 1)) -> Lesion:
    """A lesion whose own frame calls P(neoplastic | polyp) = p (uncertain inside [0.35, 0.65])."""
    class_index = NEOPLASTIC if p >= 0.5 else NON_NEOPLASTIC
    return Lesion(label, area, 1.0, class_index, CLASS_NAMES[class_index], 0.9, bbox, p, 0.35 <= p <= 0.65)


def square_mask(x: int, y: int, size: int = 20, shape=(120, 160), cls: int = NEOPLASTIC) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[y : y + size, x : x + size] = cls
    return mask


def test_tracks_follow_a_moving_lesion_survive_missed_frames_and_end_at_a_cut():
    rng = np.random.default_rng(0)
    scene = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    tracker = LesionTracker(list(CLASS_NAMES), max_missed=2)
    ids = []
    for i in range(6):
        mask = square_mask(20 + 3 * i, 30) if i != 3 else np.zeros((120, 160), np.uint8)  # frame 3: missed
        found = find_lesions(mask, np.full((3, 120, 160), 1 / 3, np.float32), list(CLASS_NAMES))
        _, tracked, cut = tracker.update(i, scene, mask, found)
        assert not cut
        ids.append([t.track_id for t in tracked])
    assert ids == [[1], [1], [1], [], [1], [1]]  # one id throughout, across the missed frame
    other = 255 - scene  # a different picture: a scene cut
    mask = square_mask(35, 30)
    found = find_lesions(mask, np.full((3, 120, 160), 1 / 3, np.float32), list(CLASS_NAMES))
    _, tracked, cut = tracker.update(6, other, mask, found)
    assert cut and tracked[0].track_id == 2  # the cut ended track 1, though the lesion overlaps it
    assert [t.id for t in tracker.tracks] == [1, 2]
    brighter = np.clip(scene.astype(int) * 1.2, 0, 255).astype(np.uint8)
    assert not is_scene_cut(scene_thumbnail(scene), scene_thumbnail(brighter))  # breathing light is no cut


def test_a_track_keeps_its_class_against_single_frames_and_turns_on_steady_evidence():
    frame = np.zeros((120, 160, 3), np.uint8)
    tracker = LesionTracker(list(CLASS_NAMES), half_life=10)
    mask = square_mask(40, 40)
    classes = []
    # A neoplastic lesion whose frames waver, then a long run that says non-neoplastic.
    evidence = [0.8, 0.3, 0.8, 0.4, 0.7, 0.3, 0.8] + [0.1] * 30
    for i, p in enumerate(evidence):
        _, tracked, _ = tracker.update(i, frame, mask, [lesion(1, 400, p, (40, 40, 20, 20))])
        classes.append(tracked[0].class_index)
    assert classes[:7] == [NEOPLASTIC] * 7  # no flicker on single odd frames
    assert classes[-1] == NON_NEOPLASTIC
    changes = int(np.count_nonzero(np.diff(classes)))
    assert changes == 1  # it turned once, when the steady evidence outweighed the track's past
    frame_by_frame = [NEOPLASTIC if p >= 0.5 else NON_NEOPLASTIC for p in evidence]
    assert int(np.count_nonzero(np.diff(frame_by_frame))) >= 6


def test_a_lesion_split_into_pieces_keeps_one_track_and_one_class():
    frame = np.zeros((120, 160, 3), np.uint8)
    whole = square_mask(40, 40, size=30)
    split = np.maximum(whole, square_mask(120, 80, size=15))  # the lesion, and another one far from it
    split[:, 54:57] = 0  # the segmenter splits the lesion: a left piece (label 1) and a right one (label 2)

    def second_frame(right_piece_p: float, join_fraction: float = 0.5):
        tracker = LesionTracker(list(CLASS_NAMES), join_fraction=join_fraction)
        tracker.update(0, frame, whole, [lesion(1, 700, 0.8, (40, 40, 30, 30))])
        pieces = [
            lesion(1, 420, 0.8, (40, 40, 14, 30)),
            lesion(2, 390, right_piece_p, (57, 40, 13, 30)),
            lesion(3, 225, 0.8, (120, 80, 15, 15)),
        ]
        recolored, tracked, _ = tracker.update(1, frame, split, pieces)
        return tracker, recolored, tracked

    tracker, recolored, tracked = second_frame(0.45)  # the right piece leans non-neoplastic, unsure
    assert [t.track_id for t in tracked] == [1, 1, 2]
    # Joined, the right piece takes its track's class, in the lesion table and in the mask.
    assert tracked[1].class_index == NEOPLASTIC and (recolored[40:70, 57:70] == NEOPLASTIC).all()
    first = tracker.tracks[0]
    assert first.frames_seen == 2 and first.largest_area == 810  # a frame's pieces count once, summed
    assert 0.5 < first.neoplastic_probability < 0.8  # the unsure piece moved the evidence
    # A piece that confidently calls the other class may be a second polyp: its own track and class.
    _, _, tracked = second_frame(0.1)
    assert [t.track_id for t in tracked] == [1, 2, 3] and tracked[1].class_index == NON_NEOPLASTIC
    _, _, tracked = second_frame(0.45, join_fraction=2.0)  # joining switched off: a piece is a new track
    assert [t.track_id for t in tracked] == [1, 2, 3]


def test_segment_video_yields_every_frame_with_tracks_and_every_n(trained_model_dir, small_clip):
    model = NeoPolypUNet.from_pretrained(trained_model_dir / "best")
    results = list(segment_video(model, small_clip))
    assert [r.index for r in results] == list(range(16))
    assert all(r.inferred for r in results)
    assert any(r.scene_cut for r in results[8:10])  # the clip's cut between its two scenes
    for r in results:
        assert all(lesion.track_id is not None for lesion in r.lesions)
        for lesion in r.lesions:  # each lesion's pixels in its track's class
            assert lesion.class_index in (NEOPLASTIC, NON_NEOPLASTIC)
    sparse = list(segment_video(model, small_clip, every=4))
    assert [r.inferred for r in sparse] == [i % 4 == 0 for i in range(16)]
    assert np.array_equal(sparse[1].mask, sparse[0].mask)
    untracked = list(segment_video(model, small_clip, tracking=False))
    assert all(r.track_ids == [] for r in untracked)
    camera = list(segment_video(model, (r.frame for r in results[:3]), fps=5.0))
    assert [round(r.time, 2) for r in camera] == [0.0, 0.2, 0.4]
    with pytest.raises(ValueError, match="HxWx3"):
        list(segment_video(model, [np.zeros((8, 8), np.uint8)]))


def test_predict_cli_writes_clip_timeline_tracks_and_masks(trained_model_dir, small_clip, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        str(ROOT / "train" / "predict.py"),
        "--model",
        str(trained_model_dir / "best"),
        "--video",
        str(small_clip),
        "--output-video",
        str(out / "overlay.mp4"),
        "--timeline",
        str(out / "timeline.csv"),
        "--tracks",
        str(out / "tracks.csv"),
        "--save-masks",
        str(out / "masks"),
    ]
    # out/ does not exist yet: the CLI makes it (as it would out/new/dir/).
    shown = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # the progress bar on
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=shown)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "16 frames" in result.stdout and "frame/s" in result.stderr  # progress: plain lines, output captured
    assert "\r" not in result.stderr
    timeline = list(csv.reader((out / "timeline.csv").open()))
    assert timeline[0] == TIMELINE_HEADERS and len(timeline) == 17
    tracks = list(csv.reader((out / "tracks.csv").open()))
    assert tracks[0] == TRACK_HEADERS
    assert {row[3] for row in tracks[1:]} <= {"yes", "no"}  # one spelling of yes/no
    seen = [(int(row[6]), int(row[7])) for row in tracks[1:]]
    assert seen == sorted(seen, reverse=True)  # the longest seen first, then the largest
    masks = sorted((out / "masks").iterdir())
    assert [m.name for m in masks[:2]] == ["frame_000000.png", "frame_000001.png"] and len(masks) == 16
    colours = np.unique(np.asarray(Image.open(masks[0])).reshape(-1, 3), axis=0)
    assert {tuple(c) for c in colours} <= set(CLASS_COLORS)  # the competition's colours, lossless
    assert decode_mask(np.asarray(Image.open(masks[0]))).shape == (120, 160)
    assert probe_video(out / "overlay.mp4").codec == "h264"

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(small_clip.read_bytes()[:2000])
    command[command.index("--video") + 1] = str(bad)
    command[command.index("--output-video") + 1] = str(tmp_path / "bad_overlay.mp4")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "bad.mp4" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bad_overlay.mp4").exists()


@pytest.mark.slow
def test_the_overlaid_clip_carries_the_legend_and_the_research_mark(random_model, clip_scenes, tmp_path):
    from neopolyp_hf.masks import FrameLegend

    frames = [frame for _, frame, _ in clip_frames(clip_scenes, 3, (320, 240))]
    clip = write_clip(tmp_path / "in.mp4", frames, fps=8.0)
    write_video_outputs(random_model, clip, output_video=tmp_path / "out.mp4")
    legend = FrameLegend((320, 240), ["Neoplastic", "Non-neoplastic"], CLASS_COLORS[1:]).strip
    assert legend.shape[0] < 240 and legend.shape[1] <= 320
    for frame in read_frames(tmp_path / "out.mp4"):
        corner = frame.rgb[240 - legend.shape[0] :, : legend.shape[1]].astype(int)
        assert np.abs(corner - legend).mean() < 12  # the legend, through H.264
        assert np.abs(frame.rgb[:60, -60:].astype(int)).mean() > 20  # and the picture elsewhere


def test_write_video_outputs_leaves_nothing_half_written_on_failure(trained_model_dir, small_clip, tmp_path):
    model = NeoPolypUNet.from_pretrained(trained_model_dir / "best")
    calls = []

    def stop(done, total):
        calls.append(done)
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_video_outputs(
            model,
            small_clip,
            output_video=tmp_path / "o.mp4",
            masks_dir=tmp_path / "m",
            timeline=tmp_path / "t.csv",
            progress=stop,
        )
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "t.csv").exists()
    assert not (tmp_path / "m").exists()  # neither masks nor the folder the run made


def test_an_uncertain_track_can_leave_each_lesion_its_own_frames_class():
    frame = np.zeros((120, 160, 3), np.uint8)
    mask = square_mask(40, 40)
    # The track's mean log-odds swings around 0: uncertain after each 0.1 frame, sure after each 0.9.
    evidence = [0.9, 0.1, 0.9, 0.1]
    shown = {}
    for rule in ("track", "frame"):
        tracker = LesionTracker(list(CLASS_NAMES), settle_frames=0, uncertain_shows=rule)
        shown[rule] = []
        for i, p in enumerate(evidence):
            recolored, tracked, _ = tracker.update(i, frame, mask, [lesion(1, 400, p, (40, 40, 20, 20))])
            assert tracked[0].uncertain == (i % 2 == 1) and tracked[0].track_id == 1
            shown[rule].append(int(recolored[45, 45]))
    assert shown["track"] == [NEOPLASTIC] * 4  # the track's class, held by its hysteresis
    assert shown["frame"] == [NEOPLASTIC, NON_NEOPLASTIC, NEOPLASTIC, NON_NEOPLASTIC]  # each frame's own
    with pytest.raises(ValueError, match="uncertain_shows must be one of"):
        LesionTracker(list(CLASS_NAMES), uncertain_shows="nope")


def test_a_split_track_claims_no_class_and_shows_each_frames_own_call():
    """Two confident neoplastic frames outweigh four non-neoplastic ones in the mean log-odds, so the track's
    mean says neoplastic, sure; but only a third of its frames agree. With min_agreement the track does not
    paint its guess: each lesion keeps its own frame's class, flagged uncertain."""
    frame = np.zeros((120, 160, 3), np.uint8)
    mask = square_mask(40, 40)
    evidence = [0.999, 0.999, 0.3, 0.3, 0.3, 0.3]
    shown, flagged = {}, {}
    for agreement in (0.0, 0.7):
        tracker = LesionTracker(list(CLASS_NAMES), settle_frames=0, hysteresis=0.0, min_agreement=agreement)
        shown[agreement], flagged[agreement] = [], []
        for i, p in enumerate(evidence):
            recolored, tracked, _ = tracker.update(i, frame, mask, [lesion(1, 400, p, (40, 40, 20, 20))])
            shown[agreement].append(int(recolored[45, 45]))
            flagged[agreement].append(tracked[0].uncertain)
        assert tracker.tracks[0].neoplastic_probability > 0.65  # a confident mean
    assert shown[0.0] == [NEOPLASTIC] * 6 and not any(flagged[0.0])  # the guess, painted as a call
    assert shown[0.7][2:] == [NON_NEOPLASTIC] * 4 and all(flagged[0.7][3:])  # each frame's own call, flagged
    with pytest.raises(ValueError, match="min_agreement"):
        LesionTracker(list(CLASS_NAMES), min_agreement=1.5)


def test_the_tracking_benchmark_retracks_frame_by_frame_results_as_segment_video_tracks(trained_model_dir, small_clip):
    video_benchmark = load_script("video", folder="benchmarks")
    model = NeoPolypUNet.from_pretrained(trained_model_dir / "best")
    config = model.config
    untracked = list(segment_video(model, small_clip, tracking=False))
    settings = {"half_life": 5.0, "hysteresis": 0.0, "settle_frames": 8, "uncertain_shows": "frame"}
    tracker = LesionTracker(config["class_names"], config["uncertain_range"], **settings)
    tracked = list(segment_video(model, small_clip, tracker=tracker))
    again = video_benchmark.retrack(untracked, config["class_names"], config["uncertain_range"], settings)
    assert [r.index for r in again] == list(range(16))
    for direct, offline in zip(tracked, again, strict=True):
        assert np.array_equal(direct.mask, offline.mask) and direct.scene_cut == offline.scene_cut
        assert [(x.track_id, x.class_index) for x in direct.lesions] == [
            (x.track_id, x.class_index) for x in offline.lesions
        ]


def test_a_higher_class_threshold_calls_a_wavering_track_non_neoplastic():
    frame = np.zeros((120, 160, 3), np.uint8)
    mask = square_mask(40, 40)
    evidence = [0.6, 0.7, 0.55, 0.65, 0.6]  # a track that leans neoplastic, never far
    called = {}
    for threshold in (0.5, 0.7):
        tracker = LesionTracker(list(CLASS_NAMES), class_threshold=threshold)
        for i, p in enumerate(evidence):
            _, tracked, _ = tracker.update(i, frame, mask, [lesion(1, 400, p, (40, 40, 20, 20))])
        called[threshold] = tracked[0].class_index
    assert called == {0.5: NEOPLASTIC, 0.7: NON_NEOPLASTIC}
    with pytest.raises(ValueError, match="class_threshold must be inside"):
        LesionTracker(list(CLASS_NAMES), class_threshold=1.0)
