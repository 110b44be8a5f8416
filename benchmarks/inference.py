"""Inference benchmark: the naive path (mirroring the reference solution) against the project's.

    python benchmarks/inference.py [--model PATH] [--repeats 15] [--folder-images 16]

P1: single-image latency, a 1280x995 JPEG file in, mask, overlay and percentages out.
P2: folder throughput of predict.py (CSV of RLE rows), images/s.
Every figure is a median over repeated runs after warm-up, all from this one run on this machine;
the fp32 floor uses the best sgemm rate of the run (the CPU's speed moves during a run).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import importlib.util
import io
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from neopolyp_hf import NeoPolypUNet, harmonize_lesions, rle_decode, rle_encode
from neopolyp_hf.inference import Prediction, scores_to_mask
from neopolyp_hf.onnx.backend import CALIBRATION_METHODS, OnnxSegmenter, export_onnx, quantize_onnx
from neopolyp_hf.preprocessing import load_image, preprocess
from neopolyp_hf.synthetic import synthetic_pair

ROOT = Path(__file__).resolve().parents[1]


def load_predict_cli():
    """train/predict.py as a module, to time its main() in this process (model load included)."""
    spec = importlib.util.spec_from_file_location("predict_cli", ROOT / "train" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REAL_TEST = ROOT.parent / "shared" / "data" / "bkai-igh-neopolyp" / "test" / "test"


def naive_predict(model: NeoPolypUNet, path: Path) -> tuple[np.ndarray, Image.Image, dict[str, float]]:
    """The reference solution's inference: eager fp32, 3-channel logits resized to full size with cv2, argmax.

    The input tensor is the package's (same resize and normalization), so that the masks compare
    like with like; everything after the forward is done as the reference did it.
    """
    config = model.config
    image = np.array(Image.open(path).convert("RGB"))
    x = preprocess(image, config["input_size"], config["mean"], config["std"])[None]
    with torch.no_grad():
        logits = model(x)[0].numpy().transpose(1, 2, 0)
    full = cv2.resize(logits, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    mask = np.argmax(full, axis=2).astype(np.uint8)
    palette = np.array(config["class_colors"], np.float32)
    colour = palette[mask]
    blended = np.where((mask > 0)[..., None], 0.5 * image + 0.5 * colour, image).astype(np.uint8)
    percentages = {name: float((mask == i).mean() * 100) for i, name in enumerate(config["class_names"]) if i}
    return mask, Image.fromarray(blended), percentages


def project_predict(backend, path: Path) -> tuple[np.ndarray, Image.Image, dict[str, float]]:
    """The package's path (torch or ONNX Runtime): the same outputs, from the segmenter alone (the
    second stage is timed on its own, below)."""
    prediction = backend.predict(path, lesion_consistency=False, second_stage=False)
    return prediction.mask, prediction.overlay, prediction.percentages


def stage_profile(segmenter, path: Path, repeats: int) -> list[tuple[str, float]]:
    """Median ms of each stage of the package's single-image path, in order, for one backend."""
    config = segmenter._inference_config
    size, mean, std = config["input_size"], config["mean"], config["std"]
    rgb = load_image(path)
    batch = preprocess(rgb, size, mean, std).numpy()[None]
    scores = segmenter._forward_numpy(batch)[0]
    mask = scores_to_mask(scores, *rgb.shape[:2])

    def prediction() -> Prediction:
        return Prediction(rgb, mask, scores, config["class_names"], config["class_colors"])

    stages = [
        ("decode JPEG (load_image)", lambda: load_image(path)),
        ("resize + normalize (preprocess)", lambda: preprocess(rgb, size, mean, std)),
        ("model (forward)", lambda: segmenter._forward_numpy(batch)),
        ("upsample scores + argmax (scores_to_mask)", lambda: scores_to_mask(scores, *rgb.shape[:2])),
        ("overlay at 50%", lambda: prediction().overlay),
        ("percentages", lambda: prediction().percentages),
        ("not in P1: lesion consistency (harmonize_lesions)", lambda: harmonize_lesions(mask)),
        ("not in P1: lesion table (probabilities + lesions)", lambda: prediction().lesions),
    ]
    return [(name, median_ms(fn, repeats)) for name, fn in stages]


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def sgemm_gflops(size: int = 2048, repeats: int = 10) -> float:
    """The CPU's fp32 matrix-product rate: the best of `repeats` (a floor is what the CPU can do)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def forward_flops(model: NeoPolypUNet) -> float:
    size = model.config["input_size"]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def naive_folder(model: NeoPolypUNet, images: list[Path], output: Path) -> None:
    """The reference loop over a folder: naive prediction, RLE, CSV."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["Id", "Expected"])
    for path in images:
        mask = naive_predict(model, path)[0]
        writer.writerow([f"{path.stem}_0", rle_encode(mask == 1)])
        writer.writerow([f"{path.stem}_1", rle_encode(mask == 2)])
    output.write_text(buffer.getvalue())


def benchmark_image(workdir: Path) -> Path:
    """A real 1280x995 test image where the shared data is present, else a synthetic one."""
    for path in sorted(REAL_TEST.glob("*.jpeg")):
        with Image.open(path) as image:
            if image.size == (1280, 995):
                return path
    image, _ = synthetic_pair(np.random.default_rng(0), 995, 1280)
    path = workdir / "frame_1280x995.jpeg"
    Image.fromarray(image).save(path, quality=95)
    return path


def second_stage_cost(backends: dict, workdir: Path, repeats: int) -> None:
    """P1 (`predict()`, overlay included) with the second stage against without, on a real frame where
    the model finds 1 to 3 lesions (the first such test frame)."""
    probe = next(iter(backends.values()))
    frames = sorted(REAL_TEST.glob("*.jpeg")) or [benchmark_image(workdir)]
    frame = next((f for f in frames if 1 <= len(probe.predict(f, second_stage=False).lesions) <= 3), frames[0])
    lesions = len(probe.predict(frame, second_stage=False).lesions)
    print(f"\nP1 with the second stage: {frame.name}, {lesions} lesion(s) found; predict() + overlay, median")
    print("| backend | one stage ms | two stages ms | ratio |")
    print("|---|---|---|---|")
    for name, backend in backends.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(2 * repeats + 4):  # interleaved, so that both see the same machine
            second = bool(i % 2)
            started = time.perf_counter()
            backend.predict(frame, second_stage=second).overlay  # noqa: B018  (rendered, as the app does)
            if i >= 4:
                times[second].append(1000 * (time.perf_counter() - started))
        one, two = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {name} | {one:.1f} | {two:.1f} | {two / one:.3f}x |")


def folder_images(workdir: Path, count: int) -> list[Path]:
    real = sorted(REAL_TEST.glob("*.jpeg"))[:count]
    if len(real) == count:
        return real
    folder = workdir / "folder"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(synthetic_pair(rng, 995, 1280)[0]).save(folder / f"img{i:03d}.jpeg", quality=95)
    return sorted(folder.iterdir())


def calibration_images(args: argparse.Namespace, workdir: Path) -> list[Path]:
    """INT8 calibration frames: --calibration-dir, else the shared train images, else synthetic ones."""
    folder = Path(args.calibration_dir) if args.calibration_dir else REAL_TEST.parents[1] / "train" / "train"
    images = sorted(folder.glob("*.jpeg"))
    if not images:
        return folder_images(workdir, args.calibration_count)
    step = max(1, len(images) // args.calibration_count)
    return images[::step][: args.calibration_count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or repo (default: seeded random init, 256 px)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--folder-images", type=int, default=16)
    parser.add_argument(
        "--calibration-dir", default=None, help="INT8 calibration frames (default: the shared train images)"
    )
    parser.add_argument("--calibration-count", type=int, default=32)
    parser.add_argument("--calibration-method", default="minmax", choices=CALIBRATION_METHODS)
    args = parser.parse_args()

    torch.manual_seed(0)
    naive_model = (NeoPolypUNet.from_pretrained(args.model) if args.model else NeoPolypUNet()).eval()
    # The same weights in each path: plain eager fp32 (contiguous) for (a) and (b0).
    plain_model = copy.deepcopy(naive_model)
    fp32_model = copy.deepcopy(naive_model).optimize_for_inference("fp32")
    bf16_model = copy.deepcopy(naive_model).optimize_for_inference("bf16")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        onnx_model = OnnxSegmenter(export_onnx(naive_model, workdir / "model.onnx"))
        image_path = benchmark_image(workdir)
        calibration = calibration_images(args, workdir)
        int8_path = quantize_onnx(
            workdir / "model.onnx", workdir / "model_int8.onnx", calibration, method=args.calibration_method
        )
        int8_model = OnnxSegmenter(int8_path)
        print(
            f"INT8 ({args.calibration_method}, {len(calibration)} calibration frames): "
            f"{int8_path.stat().st_size / 1e6:.1f} MB, fp32 {(workdir / 'model.onnx').stat().st_size / 1e6:.1f} MB"
        )
        height, width = np.asarray(Image.open(image_path)).shape[:2]
        size = naive_model.config["input_size"]
        batch = preprocess(
            np.asarray(Image.open(image_path).convert("RGB")),
            size,
            naive_model.config["mean"],
            naive_model.config["std"],
        ).numpy()[None]

        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; image {image_path.name} "
            f"({width}x{height}); model input {size} px; {args.repeats} repeats, median"
        )
        gflop = forward_flops(naive_model) / 1e9
        rate = sgemm_gflops()
        floor_ms = gflop / rate * 1000
        print(f"forward: {gflop:.1f} GFLOP; sgemm at best {rate:.0f} GFLOP/s -> fp32 floor {floor_ms:.0f} ms\n")

        reference_mask = naive_predict(naive_model, image_path)[0]
        paths = {
            "(a) naive: eager fp32, 3-ch full-size resize, argmax": (
                lambda: naive_predict(naive_model, image_path),
                lambda: naive_model(torch.from_numpy(batch)),
            ),
            "(b0) package post-processing, eager fp32": (
                lambda: project_predict(plain_model, image_path),
                lambda: plain_model._forward_numpy(batch),
            ),
            "(b) package torch: + channels-last fp32": (
                lambda: project_predict(fp32_model, image_path),
                lambda: fp32_model._forward_numpy(batch),
            ),
            "(b2) package torch: + bf16 autocast": (
                lambda: project_predict(bf16_model, image_path),
                lambda: bf16_model._forward_numpy(batch),
            ),
            "(c) package ONNX Runtime fp32": (
                lambda: project_predict(onnx_model, image_path),
                lambda: onnx_model.forward(batch),
            ),
            "(d) package ONNX Runtime INT8 (static, QDQ)": (
                lambda: project_predict(int8_model, image_path),
                lambda: int8_model.forward(batch),
            ),
        }
        rows = []
        # Path by path, not round-robin: alternating torch and ONNX Runtime calls makes each
        # runtime's threads wait for the other's to let go of the cores (measured: slower forwards).
        with torch.inference_mode():
            for name, (end_to_end, forward) in paths.items():
                e2e = median_ms(end_to_end, args.repeats)
                model_ms = median_ms(forward, args.repeats)
                agreement = float((end_to_end()[0] == reference_mask).mean())
                rows.append((name, e2e, model_ms, agreement))
        base = rows[0][1]
        print("P1: single image, JPEG file in -> mask, overlay, percentages out")
        print("| path | end to end ms | speed-up vs (a) | model ms | model vs fp32 floor | mask agreement with (a) |")
        print("|---|---|---|---|---|---|")
        for name, e2e, model_ms, agreement in rows:
            print(
                f"| {name} | {e2e:.1f} | {base / e2e:.2f}x | {model_ms:.1f} | {model_ms / floor_ms:.2f}x | "
                f"{100 * agreement:.3f}% |"
            )

        # Where the INT8 path's time goes, stage by stage (the P1 row sums the first six).
        print("\nP1 profile: package ONNX Runtime INT8, stage by stage")
        print("| stage | ms | share of the P1 row |")
        print("|---|---|---|")
        int8_e2e = rows[-1][1]
        for stage, ms in stage_profile(int8_model, image_path, args.repeats):
            print(f"| {stage} | {ms:.1f} | {100 * ms / int8_e2e:.0f}% |")

        if naive_model.config.get("lesion_classifier"):
            second_stage_cost({"ONNX Runtime fp32": onnx_model, "ONNX Runtime INT8": int8_model}, workdir, args.repeats)

        images = folder_images(workdir, args.folder_images)
        folder = workdir / "p2"
        folder.mkdir()
        for path in images:
            (folder / path.name).symlink_to(path)
        model_dir = workdir / "saved"
        naive_model.save_pretrained(model_dir)
        common = ["--images", str(folder), "--batch-size", "4", "--no-lesion-consistency"]

        predict_cli = load_predict_cli()

        def cli(output: str, *extra: str):
            argv = ["--model", str(model_dir), *common, "--output", str(workdir / output), *extra]
            return lambda: predict_cli.main(predict_cli.get_args_parser().parse_args(argv))

        runs = {
            "(a) naive loop": (lambda: naive_folder(naive_model, images, workdir / "naive.csv"), "naive.csv"),
            "(b) predict.py --backend torch": (cli("torch.csv", "--backend", "torch"), "torch.csv"),
            "(b2) predict.py --backend torch --precision bf16": (
                cli("bf16.csv", "--backend", "torch", "--precision", "bf16"),
                "bf16.csv",
            ),
            "(c) predict.py --backend onnx": (
                cli("onnx.csv", "--backend", "onnx", "--model", str(workdir / "model.onnx")),
                "onnx.csv",
            ),
            "(d) predict.py --backend onnx, INT8 file": (
                cli("int8.csv", "--backend", "onnx", "--model", str(int8_path)),
                "int8.csv",
            ),
        }
        print(f"\nP2: folder of {len(images)} images -> submission CSV (batch 4, model load included)")
        print("| path | images/s | speed-up vs (a) | mask agreement with (a) |")
        print("|---|---|---|---|")
        shapes = {p.stem: np.asarray(Image.open(p)).shape[:2] for p in images}
        naive_rows, base_rate = None, None
        for name, (run, output) in runs.items():
            # predict.py's own summary line and progress bars stay out of the table.
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                seconds = median_ms(run, max(3, args.repeats // 5), warmup=1) / 1000
            rate = len(images) / seconds
            base_rate = base_rate or rate
            with open(workdir / output, newline="") as handle:
                rows_now = {r[0]: r[1] for r in list(csv.reader(handle))[1:]}
            naive_rows = naive_rows or rows_now
            same = total = 0
            for key, rle in rows_now.items():
                shape = shapes[key.rpartition("_")[0]]
                a, b = rle_decode(naive_rows[key], shape), rle_decode(rle, shape)
                same, total = same + int((a == b).sum()), total + a.size
            print(f"| {name} | {rate:.2f} | {rate / base_rate:.2f}x | {100 * same / total:.3f}% |")


if __name__ == "__main__":
    main()
