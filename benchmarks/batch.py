"""Archive mode's speed on this machine, ratios from one run: frames/s of the single-process CLI path
(`predict.py --video`) against Ray Data with 1 and 2 CPU actors, Ray's overhead per frame, and where a
frame's time goes (decode, model, tracking, writing).

    python benchmarks/batch.py [--data-dir ../shared/data/bkai-igh-neopolyp] [--model MODEL]
        [--clips 4] [--frames 120] [--frame-size 640x512] [--precision fp32|int8] [--output JSON]

Without --model, an untrained EfficientNet-Lite0 U-Net at 256 px is saved and used (speed does not depend
on the weights). Clips are made from the data's frames (a moving camera, `neopolyp_hf.training.clips`),
or from synthetic ones. Nothing else should run on the machine meanwhile. Ray's start-up (actors, model
load) is measured on a one-clip warm-up run with the same workers and taken out of the steady rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from neopolyp_hf.atomic import write_text_atomic


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--size", type=int, default=256, help="input size of the untrained model")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=120, help="frames per clip")
    parser.add_argument("--frame-size", default="640x512")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    parser.add_argument("--output", default=None, help="a JSON file for the results")
    return parser


def make_clips(args, folder: Path) -> list[Path]:
    """`--clips` clips of `--frames` frames at 25 frames/s, each from two scenes of a moving camera."""
    from neopolyp_hf.synthetic import write_dataset
    from neopolyp_hf.training.clips import clip_frames, write_clip
    from neopolyp_hf.training.data import find_pairs, load_pair

    data = Path(args.data_dir) if args.data_dir else write_dataset(folder / "synthetic", count=2 * args.clips, seed=0)
    samples = find_pairs(data)[:: max(1, len(find_pairs(data)) // (2 * args.clips))]
    width, height = (int(v) for v in args.frame_size.split("x"))
    clips = []
    for index in range(args.clips):
        scenes = [load_pair(s) for s in samples[2 * index : 2 * index + 2]]
        frames = [frame for _, frame, _ in clip_frames(scenes, args.frames // 2, (width, height))]
        clips.append(write_clip(folder / "archive" / f"clip{index}.mp4", frames, fps=25.0))
    write_clip(folder / "warmup" / "tiny.mp4", frames[:2], fps=25.0)  # Ray's start-up, with next to no work
    return clips


def single_process(model_source: str, precision: str, clips: list[Path], threads: int, folder: Path) -> float:
    """Frames/s of what `predict.py --video --timeline --tracks` runs, clip after clip, in this process."""
    import cv2
    import torch

    from neopolyp_hf.onnx.loading import load_segmenter
    from neopolyp_hf.video.pipeline import write_video_outputs

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    model, _ = load_segmenter(model_source, precision=precision, threads=threads)
    started, frames = time.perf_counter(), 0
    for clip in clips:
        outputs = write_video_outputs(model, clip, timeline=folder / "t.csv", tracks=folder / "k.csv")
        frames += outputs.frames
    return frames / (time.perf_counter() - started)


def ray_run(model_source: str, precision: str, source: Path, workers: int, threads: int, output: Path) -> tuple:
    """(wall seconds, frames) of one neopolyp-batch run."""
    from neopolyp_hf.batch.cli import get_args_parser as batch_parser
    from neopolyp_hf.batch.cli import run

    argv = [str(source), "--model", model_source, "--output", str(output), "--precision", precision]
    argv += ["--workers", str(workers), "--threads-per-worker", str(threads)]
    started = time.perf_counter()
    counts = run(batch_parser().parse_args(argv))
    return time.perf_counter() - started, counts["frames"]


def stage_shares(model_source: str, precision: str, clip: Path, folder: Path) -> dict[str, float]:
    """Milliseconds a frame in each stage of one worker (1 thread), and each stage's share of their sum."""
    import cv2
    import torch

    from neopolyp_hf.batch import tables
    from neopolyp_hf.onnx.loading import load_segmenter
    from neopolyp_hf.video.sources import read_frames
    from neopolyp_hf.video.tracking import LesionTracker

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    model, _ = load_segmenter(model_source, precision=precision, threads=1)
    config = model._inference_config
    started = time.perf_counter()
    frames = [frame.rgb for frame in read_frames(clip)]
    decode = time.perf_counter() - started
    started = time.perf_counter()
    predictions = [model.predict(rgb) for rgb in frames]
    inference = time.perf_counter() - started
    tracker = LesionTracker(config["class_names"], config["uncertain_range"])
    started = time.perf_counter()
    for index, (rgb, prediction) in enumerate(zip(frames, predictions, strict=True)):
        tracker.update(index, rgb, prediction.mask, prediction.lesions)
    tracking = time.perf_counter() - started
    rows = [
        {
            "procedure_id": "p",
            "path": "p",
            "frame_index": i,
            "time_s": i / 25,
            "neoplastic_percent": 0.0,
            "non_neoplastic_percent": 0.0,
            "lesions": 0,
            "track_ids": [],
        }
        for i in range(len(frames))
    ]
    started = time.perf_counter()
    tables.write_rows(folder, "frames", "p", rows, tables.schema("frames", []))
    writing = time.perf_counter() - started
    stages = {"decode": decode, "model": inference, "tracking": tracking, "writing": writing}
    total = sum(stages.values())
    result = {f"{k}_ms": 1000 * v / len(frames) for k, v in stages.items()}
    result.update({f"{k}_share": v / total for k, v in stages.items()})
    return result


def main(args: argparse.Namespace) -> dict:
    """Run every measurement and print the table."""
    import ray

    with tempfile.TemporaryDirectory(prefix="neopolyp-batch-bench-") as tmp:
        folder = Path(tmp)
        model_source = args.model
        if model_source is None:
            from neopolyp_hf import NeoPolypUNet

            model_source = str(folder / "model")
            NeoPolypUNet(
                encoder_name="timm-tf_efficientnet_lite0", encoder_weights=None, input_size=args.size
            ).save_pretrained(model_source)
        clips = make_clips(args, folder)
        frames = sum(1 for _ in clips) * args.frames
        result: dict = {"clips": len(clips), "frames_per_clip": args.frames, "frame_size": args.frame_size}
        result["single_process_fps_1_thread"] = single_process(model_source, args.precision, clips, 1, folder)
        result["single_process_fps_2_threads"] = single_process(model_source, args.precision, clips, 2, folder)
        from neopolyp_hf.batch.cli import start_ray

        start_ray(None)
        for workers, threads in ((1, 1), (2, 1), (1, 2)):
            name = f"ray_{workers}x{threads}"
            warm_wall, _ = ray_run(
                model_source, args.precision, folder / "warmup", workers, threads, folder / f"{name}_w"
            )
            wall, done = ray_run(model_source, args.precision, folder / "archive", workers, threads, folder / name)
            steady = done / max(wall - warm_wall, 1e-9)
            result[f"{name}_fps_end_to_end"] = done / wall
            result[f"{name}_fps_steady"] = steady
            result[f"{name}_startup_s"] = warm_wall
        ray.shutdown()
        result["ray_overhead_per_frame_1_thread"] = (
            result["single_process_fps_1_thread"] / result["ray_1x1_fps_steady"] - 1
        )
        result["two_actors_over_one"] = result["ray_2x1_fps_steady"] / result["ray_1x1_fps_steady"]
        result["stages"] = stage_shares(model_source, args.precision, clips[0], folder)
    assert frames
    print("| run | frames/s |\n|---|---|")
    for key, value in result.items():
        if key.endswith(("fps_1_thread", "fps_2_threads", "fps_steady", "fps_end_to_end")):
            print(f"| {key} | {value:.1f} |")
    print(
        f"Ray's overhead per frame (1 thread): {100 * result['ray_overhead_per_frame_1_thread']:+.1f} %; "
        f"two 1-thread actors over one: {result['two_actors_over_one']:.2f}x"
    )
    print(
        "stages (ms a frame, share): "
        + ", ".join(
            f"{k} {result['stages'][k + '_ms']:.1f} ({100 * result['stages'][k + '_share']:.0f} %)"
            for k in ("decode", "model", "tracking", "writing")
        )
    )
    if args.output:
        write_text_atomic(args.output, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
    sys.exit(0)
