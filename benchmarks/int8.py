"""INT8 calibration methods against fp32 on held-out real images: mask agreement, Dice, file size.

    python benchmarks/int8.py --model MODEL_DIR --data-dir ../shared/data/bkai-igh-neopolyp \
        --ids MODEL_DIR/../split.json [--calibration-count 32] [--methods minmax percentile entropy]

Calibration frames are taken evenly from the pairs that are NOT in --ids (the training side), and
every score is on the --ids images (a training split.json's "val" list, or one id per line).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from neopolyp_hf import NeoPolypUNet
from neopolyp_hf.atomic import write_text_atomic
from neopolyp_hf.onnx.backend import CALIBRATION_METHODS, OnnxSegmenter, export_onnx, quantize_onnx
from neopolyp_hf.training.data import find_pairs, load_pair
from neopolyp_hf.training.evaluation import evaluate_model, read_ids, select_samples

COLUMNS = ("dice_neoplastic", "dice_non_neoplastic", "dice_mean", "dice_per_image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--ids", required=True, help="the held-out ids: a split.json ('val') or one id per line")
    parser.add_argument("--calibration-count", type=int, default=32)
    parser.add_argument("--methods", nargs="+", default=["minmax", "percentile"], choices=CALIBRATION_METHODS)
    parser.add_argument("--max-images", type=int, default=None, help="score only the first N held-out images")
    parser.add_argument("--output", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()

    held_out = read_ids(args.ids)
    samples = select_samples(args.data_dir, held_out)[: args.max_images]
    training_side = [s for s in find_pairs(args.data_dir) if s.id not in set(held_out)]
    step = max(1, len(training_side) // args.calibration_count)
    calibration = [s.image_path for s in training_side[::step][: args.calibration_count]]
    model = NeoPolypUNet.from_pretrained(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        fp32_path = export_onnx(model, Path(workdir) / "fp32.onnx")
        fp32 = OnnxSegmenter(fp32_path)
        reference = {s.id: fp32.predict(load_pair(s)[0]).mask for s in samples}
        rows.append(
            {"precision": "fp32", "method": "-", "mb": fp32_path.stat().st_size / 1e6, **evaluate_model(fp32, samples)}
        )
        rows[-1]["agreement"] = 1.0
        for method in args.methods:
            started = time.perf_counter()
            path = quantize_onnx(fp32_path, Path(workdir) / f"{method}.onnx", calibration, method=method)
            seconds = time.perf_counter() - started
            int8 = OnnxSegmenter(path)
            same = total = 0
            for sample in samples:
                mask = int8.predict(load_pair(sample)[0]).mask
                same, total = same + int((mask == reference[sample.id]).sum()), total + mask.size
            scores = evaluate_model(int8, samples)
            rows.append(
                {"precision": "int8", "method": method, "mb": path.stat().st_size / 1e6, **scores}
                | {"agreement": same / total, "calibration_seconds": seconds}
            )
            print(json.dumps({k: rows[-1][k] for k in ("method", "agreement", *COLUMNS)}), flush=True)
    if args.output:
        write_text_atomic(args.output, json.dumps(rows, indent=1, default=float))
    base = rows[0]
    print(f"\n{len(samples)} held-out images, {len(calibration)} calibration frames from the training side\n")
    print("| precision | calibration | MB | pixels equal to fp32 | " + " | ".join(COLUMNS) + " | Δ neo | Δ non-neo |")
    print("|---|---|---|---|" + "---|" * len(COLUMNS) + "---|---|")
    for row in rows:
        deltas = [row[c] - base[c] for c in ("dice_neoplastic", "dice_non_neoplastic")]
        print(
            f"| {row['precision']} | {row['method']} | {row['mb']:.1f} | {100 * row['agreement']:.2f} % | "
            + " | ".join(f"{row[c]:.4f}" for c in COLUMNS)
            + " | "
            + " | ".join(f"{d:+.4f}" for d in deltas)
            + " |"
        )


if __name__ == "__main__":
    main()
