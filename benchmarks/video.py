"""Video: frame rates of the whole pipeline against the model alone, and what tracking does to quality.

    python benchmarks/video.py --model MODEL --data-dir DATA [--ids OUT/split.json] \\
        [--backends torch onnx int8] [--scenes 6] [--frames-per-scene 50] [--size 960x736] [--input-size 256]

The clip is made from real held-out frames (`--ids`: a split.json's "val", so the model never trained
on them): each scene is one frame seen through a moving camera (zoom towards the polyp, pan, roll,
breathing light), the true mask warped with it, and a cut between scenes. Per backend it prints:

- end-to-end frames/s: decode, model, tracking, overlay and H.264 encode (`write_video_outputs`);
- model-only frames/s: `predict()` on the same decoded frames, the ceiling, and the ratio of the two;
- ms a frame by stage, from passes through fewer stages (decode + model, + tracking): where the
  end-to-end time goes besides the model;
- pooled Dice per class over all frames, with tracking and frame by frame (`--no-tracking`);
- flicker: class changes per track per 100 track-frames, with and without tracking;
- track-id switches inside a scene: a true lesion whose best-overlapping track changes;
- class flips per 1000 frames: the class called over a true polyp changing between frames (the field's
  temporal figure), and tracks per true polyp inside a scene (fragmentation; 1 is ideal).

`--input-size` runs the model at another input size than it was trained at (a fully convolutional
U-Net accepts it): for frame rates at 256 px with a 128 px model. All figures come from one run.

    python benchmarks/video.py --space --model MODEL --data-dir DATA [--ids ...]

instead times the Space's Video tab (app.py on loopback, `/predict_video` through gradio_client)
against `train/predict.py --video` on the same 10 s clip, and measures how much a 60 s 720p clip
adds to the server's memory (peak RSS during the request, minus RSS before it).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tables import (  # a sibling module of the benchmarks: Python puts a script's folder first on sys.path
    print_table,
    save_rows,
)

from neopolyp_hf import NeoPolypUNet
from neopolyp_hf.classes import CLASS_NAMES, POLYP_CLASSES
from neopolyp_hf.lesions import label_lesions
from neopolyp_hf.onnx.backend import OnnxSegmenter, export_onnx, quantize_onnx
from neopolyp_hf.training.clips import scene_frames, write_clip
from neopolyp_hf.training.data import load_pair
from neopolyp_hf.training.evaluation import read_ids, select_samples
from neopolyp_hf.training.metrics import DiceAccumulator
from neopolyp_hf.video.pipeline import segment_video, write_video_outputs
from neopolyp_hf.video.sources import read_frames
from neopolyp_hf.video.tracking import LesionTracker

INSTANCES = 3  # truth masks carry class + 3 x instance, so nearest warping keeps each true lesion's identity


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--ids", default=None, help="held-out ids: a split.json (its 'val') or one id per line")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx", "int8"])
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--frames-per-scene", type=int, default=50)
    parser.add_argument("--size", default="960x736", help="clip frame size WIDTHxHEIGHT")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--input-size", type=int, default=None, help="run the model at this input size")
    parser.add_argument("--output", default=None, help="also write the figures here as JSON")
    parser.add_argument("--space", action="store_true", help="time the Space's Video tab against the CLI")
    parser.add_argument(
        "--choose-tracking",
        action="store_true",
        help="choose the tracker's class rule on clips of half the held-out frames, report it on the other half",
    )
    parser.add_argument("--clips", type=int, default=3, help="clips per half with --choose-tracking")
    return parser


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def space_benchmark(args) -> dict:
    """The Video tab against the CLI on a 10 s clip, and the memory a 60 s 720p clip adds."""
    import subprocess
    import threading

    from gradio_client import Client, handle_file

    from neopolyp_hf.serving.loopback import start_app, stop_app

    root = Path(__file__).resolve().parents[1]
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        short = argparse.Namespace(**{**vars(args), "scenes": 2, "frames_per_scene": int(5 * args.fps)})
        clip, _, _ = make_clip(short, workdir)
        command = [sys.executable, str(root / "train" / "predict.py"), "--model", args.model, "--video", str(clip)]
        started = time.perf_counter()
        subprocess.run([*command, "--output-video", str(workdir / "cli.mp4")], check=True, capture_output=True)
        figures["cli_seconds"] = time.perf_counter() - started
        process, url = start_app(root / "app.py", {"NEOPOLYP_MODEL": args.model, "NEOPOLYP_MAX_VIDEO_SECONDS": "61"})
        try:
            client = Client(url, verbose=False)
            started = time.perf_counter()
            client.predict(handle_file(str(clip)), api_name="/predict_video")
            figures["space_seconds"] = time.perf_counter() - started
            figures["space_over_cli"] = figures["space_seconds"] / figures["cli_seconds"]
            long = argparse.Namespace(
                **{**vars(args), "size": "1280x720", "scenes": 6, "frames_per_scene": int(10 * args.fps)}
            )
            long_clip, _, _ = make_clip(long, workdir)
            before = rss_mb(process.pid)
            peak, done = [before], threading.Event()

            def watch() -> None:
                while not done.is_set():
                    peak.append(rss_mb(process.pid))
                    time.sleep(0.2)

            watcher = threading.Thread(target=watch)
            watcher.start()
            started = time.perf_counter()
            client.predict(handle_file(str(long_clip)), api_name="/predict_video")
            figures["long_clip_seconds"] = time.perf_counter() - started
            done.set()
            watcher.join()
            figures.update(rss_before_mb=before, rss_peak_mb=max(peak), rss_added_mb=max(peak) - before)
        finally:
            stop_app(process)
    print(json.dumps(figures, indent=1))
    return figures


def make_clip(args, workdir: Path, samples=None, name: str = "clip.mp4") -> tuple[Path, list[np.ndarray], list[int]]:
    """The clip, each frame's truth (class + 3 x instance) and scene, from held-out frames with polyps
    (`samples`, else those of `--ids`)."""
    if samples is None:
        samples = select_samples(args.data_dir, read_ids(args.ids) if args.ids else None)
    width, height = (int(v) for v in args.size.split("x"))
    frames, truths, scenes = [], [], []
    chosen = 0
    for sample in samples[:: max(1, len(samples) // (4 * args.scenes))]:
        image, mask = load_pair(sample)
        if not (mask > 0).any() or chosen == args.scenes:
            continue
        _, labels, _ = label_lesions(mask)
        instanced = (mask + INSTANCES * np.minimum(labels, 80)).astype(np.uint8)
        for frame, truth in scene_frames(image, instanced, args.frames_per_scene, (width, height)):
            frames.append(frame)
            truths.append(truth)
            scenes.append(chosen)
        chosen += 1
    path = write_clip(workdir / name, frames, fps=args.fps)
    return path, truths, scenes


def flicker(results, tracked: bool) -> float:
    """Class changes per track per 100 track-frames. Frame by frame, lesions are matched into tracks by
    the same tracker, but each keeps the class its own frame gave it; a track holding several pieces
    in one frame counts the class most of their area has."""
    tracker = None if tracked else LesionTracker(list(CLASS_NAMES))
    last: dict[int, int] = {}
    changes = seen = 0
    for result in results:
        track_ids = [lesion.track_id for lesion in result.lesions]
        if tracker is not None:
            _, matched, _ = tracker.update(result.index, result.frame, result.mask, result.lesions)
            track_ids = [lesion.track_id for lesion in matched]
        area: dict[int, np.ndarray] = {}
        for track_id, lesion in zip(track_ids, result.lesions, strict=True):
            area.setdefault(track_id, np.zeros(len(CLASS_NAMES)))[lesion.class_index] += lesion.area_px
        for track_id, by_class in area.items():
            class_index = int(by_class.argmax())
            seen += 1
            changes += track_id in last and last[track_id] != class_index
            last[track_id] = class_index
    return 100.0 * changes / max(seen, 1)


def id_switches(results, truths: list[np.ndarray], scenes: list[int]) -> int:
    """Times a true lesion's best-overlapping track id changes between two frames of one scene."""
    previous: dict[tuple[int, int], int] = {}
    switches = 0
    for result, truth, scene in zip(results, truths, scenes, strict=True):
        count, labels, _ = label_lesions(result.mask)
        by_label = {lesion.label: lesion.track_id for lesion in result.lesions}
        for instance in np.unique(truth // INSTANCES):
            if instance == 0:
                continue
            under = labels[(truth // INSTANCES) == instance]
            under = under[under > 0]
            if under.size == 0:
                continue
            track = by_label.get(int(np.bincount(under).argmax()))
            key = (scene, int(instance))
            if key in previous and track is not None and previous[key] != track:
                switches += 1
            if track is not None:
                previous[key] = track
    return switches


def true_polyps(result, truth: np.ndarray):
    """(instance, predicted polyp class under it or None, track ids of the lesions over it) per true polyp."""
    _, labels, _ = label_lesions(result.mask)
    by_label = {lesion.label: lesion.track_id for lesion in result.lesions}
    instances = truth // INSTANCES
    for instance in np.unique(instances):
        if instance == 0:
            continue
        inside = instances == instance
        votes = np.bincount(result.mask[inside], minlength=len(CLASS_NAMES))[1:]
        called = int(votes.argmax()) + 1 if votes.any() else None
        tracks = {by_label[int(k)] for k in np.unique(labels[inside]) if k and by_label.get(int(k)) is not None}
        yield int(instance), called, tracks


def flips_per_1000(results, truths: list[np.ndarray], scenes: list[int]) -> float:
    """Changes of the class called over a true polyp between consecutive frames of a scene (its
    pixels' majority polyp class), per 1000 frames: the field's temporal-consistency figure."""
    last: dict[tuple[int, int], int] = {}
    flips = 0
    for result, truth, scene in zip(results, truths, scenes, strict=True):
        for instance, called, _ in true_polyps(result, truth):
            key = (scene, instance)
            if called is not None:
                flips += key in last and last[key] != called
                last[key] = called
    return 1000.0 * flips / max(len(results), 1)


def fragmentation(results, truths: list[np.ndarray], scenes: list[int]) -> float:
    """Distinct tracks per true polyp inside a scene (1 is ideal): how often one polyp is split or re-found
    as new tracks."""
    tracks: dict[tuple[int, int], set] = {}
    for result, truth, scene in zip(results, truths, scenes, strict=True):
        for instance, _, over in true_polyps(result, truth):
            tracks.setdefault((scene, instance), set()).update(over)
    found = [len(ids) for ids in tracks.values() if ids]
    return float(np.mean(found)) if found else float("nan")


def dice(results, truths: list[np.ndarray]) -> dict[str, float]:
    accumulator = DiceAccumulator(list(CLASS_NAMES))
    for result, truth in zip(results, truths, strict=True):
        accumulator.update(result.mask, truth % INSTANCES)
    scores = accumulator.compute()
    return {f"dice_{CLASS_NAMES[c]}": scores[f"dice_{CLASS_NAMES[c]}"] for c in POLYP_CLASSES}


def load_backend(name: str, model: NeoPolypUNet, workdir: Path, calibration: list[np.ndarray]):
    if name == "torch":
        return model.optimize_for_inference()
    fp32 = workdir / "model.onnx"
    if not fp32.is_file():
        export_onnx(model, fp32)
    if name == "onnx":
        return OnnxSegmenter(fp32)
    int8 = workdir / "model_int8.onnx"
    if not int8.is_file():
        quantize_onnx(fp32, int8, calibration)
    return OnnxSegmenter(int8)


# The class rule's settings screened by --choose-tracking (LesionTracker's arguments; half-life 0: no fading).
# A first grid (half-life 5/15/30/none, hysteresis 0/0.1/0.25, settling 2/8 frames, an uncertain track
# showing its class or each frame's) lost Dice in every setting, least with 2 settling frames and the
# track's class (benchmarks/results/video_choose_tracking_grid1.json); this grid keeps those and adds
# the threshold at which a track is called neoplastic.
TRACKING_GRID = {
    "half_life": (15.0, 30.0, 0.0),
    "hysteresis": (0.1, 0.25, 0.4),
    "settle_frames": (2,),
    "uncertain_shows": ("track",),
    "class_threshold": (0.5, 0.6, 0.7),
}


def retrack(results: list, class_names: list[str], uncertain_range, settings: dict) -> list:
    """Frame-by-frame results tracked afresh with `settings`: what segment_video gives with such a
    tracker, without running the model again."""
    tracker = LesionTracker(class_names, uncertain_range, **settings)
    tracked = []
    for r in results:
        mask, lesions, cut = tracker.update(r.index, r.frame, r.mask, r.lesions)
        tracked.append(dataclasses.replace(r, mask=mask, lesions=lesions, scene_cut=cut))
    return tracked


def clip_set_figures(clips: list[tuple[list, list, list]], tracked: bool) -> dict[str, float]:
    """Pooled Dice per class over several clips' (results, truths, scenes), and their temporal figures
    averaged over the clips (track ids start afresh in each clip)."""
    figures = dice([r for results, _, _ in clips for r in results], [t for _, truths, _ in clips for t in truths])
    figures["flicker_per_100"] = float(np.mean([flicker(results, tracked) for results, _, _ in clips]))
    figures["flips_per_1000_frames"] = float(np.mean([flips_per_1000(*clip) for clip in clips]))
    if tracked:
        figures["tracks_per_true_polyp"] = float(np.nanmean([fragmentation(*clip) for clip in clips]))
    return figures


def choose_tracking(args: argparse.Namespace) -> dict:
    """Split the held-out frames in two halves (alternate ids); make `--clips` clips from each; run each
    backend once per clip frame by frame; choose the tracker settings of TRACKING_GRID whose worst change
    of pooled Dice (over the classes and backends) against frame by frame is best on half A (fewer
    tracked flickers break ties); report them, and today's defaults, on half B."""
    model = NeoPolypUNet.from_pretrained(args.model)
    config = model.config
    samples = select_samples(args.data_dir, read_ids(args.ids) if args.ids else None)
    halves = {"A": samples[0::2], "B": samples[1::2]}
    keys = list(TRACKING_GRID)
    grid = [dict(zip(keys, values, strict=True)) for values in itertools.product(*TRACKING_GRID.values())]
    signature = inspect.signature(LesionTracker)
    defaults = {key: signature.parameters[key].default for key in keys}
    frame_by_frame: dict[tuple[str, str], list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for half, members in halves.items():
            chunk = -(-len(members) // args.clips)
            parts = [members[i * chunk : (i + 1) * chunk] for i in range(args.clips)]
            clips = [make_clip(args, workdir, part, f"{half}{i}.mp4") for i, part in enumerate(parts)]
            frames = sum(len(truths) for _, truths, _ in clips)
            print(f"half {half}: {len(members)} held-out frames, {args.clips} clips, {frames} frames in all")
            for name in args.backends:
                calibration = [f.rgb for f in read_frames(clips[0][0])][::8][:16]
                backend = load_backend(name, model, workdir, calibration)
                frame_by_frame[(half, name)] = [
                    (list(segment_video(backend, path, tracking=False, max_seconds=None)), truths, scenes)
                    for path, truths, scenes in clips
                ]

        plain_figures = {key: clip_set_figures(clips, False) for key, clips in frame_by_frame.items()}

        def evaluate(half: str, settings: dict) -> dict:
            per_backend = {}
            for name in args.backends:
                tracked = [
                    (retrack(results, config["class_names"], config["uncertain_range"], settings), truths, scenes)
                    for results, truths, scenes in frame_by_frame[(half, name)]
                ]
                per_backend[name] = {
                    "tracked": clip_set_figures(tracked, True),
                    "frame_by_frame": plain_figures[(half, name)],
                }
            worst = min(
                figures["tracked"][f"dice_{CLASS_NAMES[c]}"] - figures["frame_by_frame"][f"dice_{CLASS_NAMES[c]}"]
                for figures in per_backend.values()
                for c in POLYP_CLASSES
            )
            flicker_mean = float(np.mean([f["tracked"]["flicker_per_100"] for f in per_backend.values()]))
            return {"settings": settings, "worst_dice_change": worst, "tracked_flicker": flicker_mean, **per_backend}

        screened = [evaluate("A", settings) for settings in grid]
        chosen = max(screened, key=lambda row: (round(row["worst_dice_change"], 3), -row["tracked_flicker"]))
        report = {
            "chosen_on_A": chosen,
            "defaults_on_A": evaluate("A", defaults),
            "chosen_on_B": evaluate("B", chosen["settings"]),
            "defaults_on_B": evaluate("B", defaults),
            "screened_on_A": [
                {k: row[k] for k in ("settings", "worst_dice_change", "tracked_flicker")} for row in screened
            ],
        }
    print(
        "\n| half | rule | backend | Dice neo tracked / frame | Dice non-neo tracked / frame "
        "| flicker tracked / frame | flips per 1000 tracked / frame | tracks per true polyp |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label in ("defaults_on_A", "chosen_on_A", "defaults_on_B", "chosen_on_B"):
        row = report[label]
        for name in args.backends:
            t, f = row[name]["tracked"], row[name]["frame_by_frame"]
            print(
                f"| {label[-1]} | {label.split('_')[0]} {row['settings']} | {name} "
                f"| {t['dice_neoplastic']:.3f} / {f['dice_neoplastic']:.3f} "
                f"| {t['dice_non_neoplastic']:.3f} / {f['dice_non_neoplastic']:.3f} "
                f"| {t['flicker_per_100']:.2f} / {f['flicker_per_100']:.2f} "
                f"| {t['flips_per_1000_frames']:.1f} / {f['flips_per_1000_frames']:.1f} "
                f"| {t['tracks_per_true_polyp']:.2f} |"
            )
    return report


def main(args: argparse.Namespace) -> list[dict]:
    """Make the clip, then time and score each backend on it (or, with --space, time the Space)."""
    if args.choose_tracking:
        report = choose_tracking(args)
        save_rows(args.output, report)
        return [report]
    if args.space:
        figures = space_benchmark(args)
        save_rows(args.output, figures)
        return [figures]
    model = NeoPolypUNet.from_pretrained(args.model)
    if args.input_size:
        model.update_config(input_size=args.input_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        clip, truths, scenes = make_clip(args, workdir)
        decoded = [frame.rgb for frame in read_frames(clip)]
        print(
            f"clip: {len(decoded)} frames of {args.size}, {len(set(scenes))} scenes, model input "
            f"{model.config['input_size']} px, second stage: {bool(model.config.get('lesion_classifier'))}"
        )
        for name in args.backends:
            backend = load_backend(name, model, workdir, decoded[:: max(1, len(decoded) // 16)][:16])
            for frame in decoded[:3]:
                backend.predict(frame)  # warm-up
            started = time.perf_counter()
            for frame in decoded:
                backend.predict(frame)
            model_fps = len(decoded) / (time.perf_counter() - started)
            started = time.perf_counter()
            write_video_outputs(backend, clip, output_video=workdir / f"{name}.mp4", max_seconds=None)
            end_to_end_fps = len(decoded) / (time.perf_counter() - started)
            # The same clip through fewer stages, for the cost of each: decode + model, then + tracking.
            started = time.perf_counter()
            untracked = list(segment_video(backend, clip, tracking=False, max_seconds=None))
            decode_model_s = time.perf_counter() - started
            started = time.perf_counter()
            tracked = list(segment_video(backend, clip, max_seconds=None))
            decode_model_track_s = time.perf_counter() - started
            ms = 1000 / len(decoded)
            stages_ms = {
                "model": ms * len(decoded) / model_fps,
                "decode": ms * decode_model_s - ms * len(decoded) / model_fps,
                "tracking": ms * (decode_model_track_s - decode_model_s),
                "overlay_encode_tables": ms * len(decoded) / end_to_end_fps - ms * decode_model_track_s,
            }
            row = {
                "backend": name,
                "end_to_end_fps": end_to_end_fps,
                "model_only_fps": model_fps,
                "ratio": end_to_end_fps / model_fps,
                "stage_ms_per_frame": stages_ms,
                "tracked": {
                    **dice(tracked, truths),
                    "flicker_per_100": flicker(tracked, True),
                    "flips_per_1000_frames": flips_per_1000(tracked, truths, scenes),
                },
                "frame_by_frame": {
                    **dice(untracked, truths),
                    "flicker_per_100": flicker(untracked, False),
                    "flips_per_1000_frames": flips_per_1000(untracked, truths, scenes),
                },
                "id_switches_in_scene": id_switches(tracked, truths, scenes),
                "tracks_per_true_polyp": fragmentation(tracked, truths, scenes),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            print(f"{name}: ms a frame by stage " + ", ".join(f"{k} {v:.1f}" for k, v in stages_ms.items()))
    headers = ["backend", "end-to-end fps", "model-only fps", "ratio", "Dice neo tracked / frame"]
    headers += ["Dice non-neo tracked / frame", "flicker tracked / frame (per 100)"]
    headers += ["class flips tracked / frame (per 1000 frames)", "id switches", "tracks per true polyp"]

    def pair(r: dict, key: str, digits: int) -> str:
        return f"{r['tracked'][key]:.{digits}f} / {r['frame_by_frame'][key]:.{digits}f}"

    table = [
        [r["backend"], f"{r['end_to_end_fps']:.1f}", f"{r['model_only_fps']:.1f}", f"{r['ratio']:.2f}"]
        + [pair(r, "dice_neoplastic", 3), pair(r, "dice_non_neoplastic", 3), pair(r, "flicker_per_100", 2)]
        + [pair(r, "flips_per_1000_frames", 1), r["id_switches_in_scene"], f"{r['tracks_per_true_polyp']:.2f}"]
        for r in rows
    ]
    print_table(headers, table)
    save_rows(args.output, rows)
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
