"""Inference on a CUDA GPU: what the Space does when it has one (torch backend, fp32 and bf16 autocast).

    python benchmarks/gpu_inference.py [--model PATH] [--image FRAME.jpeg] [--repeats 30]

P1 as in benchmarks/inference.py (one JPEG file in; mask, overlay and percentages out), the model's
forward alone (copy back to the host included), the stage profile of the fp32 path, and the
forward's throughput at batch 16. Medians after warm-up, all from this one run.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import torch

from neopolyp_hf import NeoPolypUNet
from neopolyp_hf.preprocessing import load_image, preprocess


def _cpu_benchmark():
    """benchmarks/inference.py, loaded by its path (a sibling script, not a package): its frame and timers."""
    spec = importlib.util.spec_from_file_location(
        "neopolyp_benchmark_inference", Path(__file__).with_name("inference.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_cpu = _cpu_benchmark()
benchmark_image, median_ms, stage_profile = _cpu.benchmark_image, _cpu.median_ms, _cpu.stage_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or repo (default: seeded random init, 256 px)")
    parser.add_argument("--image", default=None, help="a frame (default: as benchmarks/inference.py)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; benchmarks/inference.py measures the CPU paths")

    torch.manual_seed(0)
    base = (NeoPolypUNet.from_pretrained(args.model) if args.model else NeoPolypUNet()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.image) if args.image else benchmark_image(Path(tmp))
        rgb = load_image(path)
        config = base.config
        batch = preprocess(rgb, config["input_size"], config["mean"], config["std"]).numpy()[None]
        print(
            f"{torch.cuda.get_device_name()}, torch {torch.__version__}; image {path.name} "
            f"({rgb.shape[1]}x{rgb.shape[0]}); model input {config['input_size']} px; {args.repeats} repeats, median"
        )
        models = {p: copy.deepcopy(base).cuda().optimize_for_inference(p) for p in ("fp32", "bf16")}
        fp32_mask = models["fp32"].predict(path).mask
        print("\n| path | P1 end to end ms | model ms | mask agreement with fp32 |")
        print("|---|---|---|---|")
        for precision, model in models.items():
            p1 = median_ms(lambda m=model: m.predict(path, lesion_consistency=False).overlay, args.repeats, warmup=5)
            forward = median_ms(lambda m=model: m._forward_numpy(batch), args.repeats, warmup=5)
            agreement = float(np.mean(model.predict(path).mask == fp32_mask))
            print(f"| torch CUDA {precision} | {p1:.1f} | {forward:.1f} | {agreement:.4%} |")

        print("\nstage profile, torch CUDA fp32 (ms):")
        for name, ms in stage_profile(models["fp32"], path, args.repeats):
            print(f"  {name:52s} {ms:7.1f}")

        print("\nforward throughput at batch 16 (images/s):")
        batch16 = torch.from_numpy(np.repeat(batch, 16, axis=0)).cuda().contiguous(memory_format=torch.channels_last)
        for precision, model in models.items():

            def forward(m=model, p=precision) -> None:
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=p == "bf16"):
                    m(batch16)
                torch.cuda.synchronize()

            print(f"  {precision}: {16 / (median_ms(forward, args.repeats, warmup=5) / 1000):.0f}")


if __name__ == "__main__":
    main()
