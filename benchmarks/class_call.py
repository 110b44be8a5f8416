"""The class call, chosen on out-of-fold data: the video tracker's class rule and the uncertain band.

    python benchmarks/class_call.py --data-dir DATA --folds-dir runs/oof/neopolyp \\
        [--frames-per-scene 12] [--size 512x384] [--output benchmarks/results/class_call_oof.json]

`--folds-dir` holds fold0, fold1, ... as `benchmarks/quality.py` leaves them: each a model trained on the
other folds (`best/`) and the ids it never saw (`fold_split.json`). Each fold's model predicts only its
own held-out frames, so every figure here is out of fold:

- **stills**, at full resolution through the default `predict()`: one record per found lesion (a
  predicted lesion over a true polyp): its P(neoplastic | polyp), area and confidence, and its true class;
- **clips**: every held-out frame with a polyp becomes one scene seen through a moving camera
  (`neopolyp_hf.training.clips.scene_frames`, the true mask warped with it), ten scenes a clip with a cut
  between each, H.264-encoded and decoded again, segmented frame by frame once; each tracker rule then
  re-tracks those results (the model does not run again).

Every rule is chosen by leave-one-fold-out: chosen on the other folds, reported on the held-out one;
tables give the mean ± standard deviation over the held-out folds. The rule for the product is then the
one chosen on all folds (its figures are the leave-one-fold-out ones: no figure is scored on the data
that chose it).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import minimize
from video import (  # a sibling benchmark script: Python puts a script's folder first on sys.path
    INSTANCES,
    clip_set_figures,
    retrack,
)

from neopolyp_hf import NeoPolypUNet
from neopolyp_hf.atomic import write_atomic, write_text_atomic
from neopolyp_hf.classes import CLASS_NAMES, POLYP_CLASSES
from neopolyp_hf.lesions import _label_regions, label_lesions, region_votes
from neopolyp_hf.logodds import logit, sigmoid
from neopolyp_hf.training.calibration import expected_calibration_error, fit_temperature
from neopolyp_hf.training.clips import scene_frames, write_clip
from neopolyp_hf.training.data import load_pair
from neopolyp_hf.training.evaluation import evaluate_model, read_ids, select_samples
from neopolyp_hf.training.metrics import class_accuracies
from neopolyp_hf.video.pipeline import segment_video

SCENES_PER_CLIP = 10
THUMBNAIL_SIZE = (64, 48)  # the tracker's scene-cut check reads a 32 px thumbnail: a small frame is enough
# The tracker rules screened (LesionTracker's arguments). min_agreement 0: a track always claims its class.
TRACK_GRID = {
    "half_life": (30.0,),  # fading (15, 30, none) changed little on the clips of benchmarks/video.py
    "hysteresis": (0.1, 0.25, 0.4),
    "class_threshold": (0.5, 0.6),
    "uncertain_shows": ("track", "frame"),
    "min_agreement": (0.0, 0.7),
}
MAX_FLICKER_RATIO = 0.2  # tracked flicker over frame-by-frame flicker: the goal
TARGET_ACCURACY = 0.90  # balanced accuracy of the confident calls
MAX_HELD_BACK = 0.30


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--folds-dir", required=True, help="fold0, fold1, ... each with best/ and fold_split.json")
    parser.add_argument("--frames-per-scene", type=int, default=12)
    parser.add_argument("--size", default="512x384", help="clip frame size WIDTHxHEIGHT")
    parser.add_argument("--output", default=None, help="also write the figures here as JSON")
    parser.add_argument("--cache", default=None, help="keep each fold's predictions here (a rerun reads them back)")
    return parser


def whole_frame_records(model, samples) -> list[dict]:
    """Found-lesion records as the lesion metrics made them before the one lesion numbering: the whole
    frame labelled by OpenCV and each lesion's label looked up in it. Kept only to measure what that fix
    changed on real predictions."""
    records = []
    for sample in samples:
        image, truth = load_pair(sample)
        prediction = model.predict(image)
        count, labels, _ = _label_regions(prediction.mask)
        votes = region_votes(labels, truth, count, 3)[:, 1:3]
        for lesion in prediction.lesions:
            if lesion.label < count and votes[lesion.label].sum():
                neoplastic = float(votes[lesion.label].argmax() == 0)
                records.append({"neoplastic": neoplastic, "final": lesion.neoplastic_probability})
    return records


def fold_stills(model, samples) -> dict:
    """The default predict()'s pooled figures and found-lesion records on a fold's held-out frames."""
    records: list[dict] = []
    scores = evaluate_model(model, samples, lesion_records=records)
    before = class_accuracies(whole_frame_records(model, samples), lambda r: r["final"])
    return {"scores": scores, "records": records, "balanced_accuracy_whole_frame_labels": before}


def fold_clips(model, samples, args, workdir: Path) -> list[tuple[list, list, list]]:
    """Each held-out frame with a polyp as a scene; ten scenes a clip; (results, truths, scenes) per clip,
    frame by frame, with each frame kept only as a thumbnail."""
    size = tuple(int(v) for v in args.size.split("x"))
    scenes = []
    for sample in samples:
        image, mask = load_pair(sample)
        if (mask > 0).any():
            _, labels, _ = label_lesions(mask)
            scenes.append((image, (mask + INSTANCES * np.minimum(labels, 80)).astype(np.uint8)))
    clips = []
    for start in range(0, len(scenes), SCENES_PER_CLIP):
        frames, truths, scene_ids = [], [], []
        for scene, (image, instanced) in enumerate(scenes[start : start + SCENES_PER_CLIP]):
            for frame, truth in scene_frames(image, instanced, args.frames_per_scene, size):
                frames.append(frame)
                truths.append(truth)
                scene_ids.append(scene)
        path = write_clip(workdir / f"clip{start}.mp4", frames, fps=25.0)
        del frames
        results = [
            dataclasses.replace(r, frame=cv2.resize(r.frame, THUMBNAIL_SIZE, interpolation=cv2.INTER_AREA))
            for r in segment_video(model, path, tracking=False, max_seconds=None)
        ]
        path.unlink()
        clips.append((results, truths, scene_ids))
    return clips


def track_rule_figures(clips, settings: dict | None, config: dict) -> dict:
    """Pooled Dice per class and temporal figures of one fold's clips, tracked with `settings` (None:
    frame by frame)."""
    if settings is None:
        return clip_set_figures(clips, False)
    tracked = [
        (retrack(results, config["class_names"], config["uncertain_range"], settings), truths, scenes)
        for results, truths, scenes in clips
    ]
    return clip_set_figures(tracked, True)


def worst_dice_change(tracked: dict, plain: dict) -> float:
    return min(tracked[f"dice_{CLASS_NAMES[c]}"] - plain[f"dice_{CLASS_NAMES[c]}"] for c in POLYP_CLASSES)


def flicker_ratio(tracked: dict, plain: dict) -> float:
    return tracked["flicker_per_100"] / max(plain["flicker_per_100"], 1e-9)


def choose_track_rule(per_fold: list[dict], folds: list[int]) -> int:
    """The grid index that keeps flicker within MAX_FLICKER_RATIO of frame by frame (mean over `folds`) and,
    among those, loses the least Dice on its worse class (mean over `folds`; 3 decimals, then the lower
    flicker); where no rule keeps flicker down, the least flicker among rules losing at most 0.01."""

    def figures(i: int) -> tuple[float, float]:
        change = np.mean([worst_dice_change(per_fold[k]["grid"][i], per_fold[k]["plain"]) for k in folds])
        ratio = np.mean([flicker_ratio(per_fold[k]["grid"][i], per_fold[k]["plain"]) for k in folds])
        return round(float(change), 3), float(ratio)

    rules = range(len(per_fold[folds[0]]["grid"]))
    steady = [i for i in rules if figures(i)[1] <= MAX_FLICKER_RATIO]
    if steady:
        return max(steady, key=lambda i: (figures(i)[0], -figures(i)[1]))
    close = [i for i in rules if figures(i)[0] >= -0.01] or list(rules)
    return min(close, key=lambda i: figures(i)[1])


# Doubt: which calls to hold back. A "correctness model" (logistic regression on the call's own evidence)
# ranks the calls by the chance that they are right; the uncertain band holds back those below a cut.
def features(records: list[dict]) -> np.ndarray:
    """Per call: |log-odds| of P(neoplastic | polyp) (its margin), which side it falls, log area and the
    lesion's mean pixel confidence."""
    z = np.clip(logit(np.clip([r["final"] for r in records], 1e-6, 1 - 1e-6)), -12, 12)
    area = np.log([max(r.get("area_px", 1.0), 1.0) for r in records])
    confidence = np.array([r.get("confidence", 0.5) for r in records])
    return np.column_stack([np.abs(z), z >= 0, area, confidence, np.ones(len(records))])


def raw_logits(records: list[dict]) -> np.ndarray:
    """The segmenter's own log-odds of each call (before any temperature)."""
    return logit([r["segmenter"] for r in records])


def calibrated(records: list[dict], temperature: float) -> list[dict]:
    """The records with "final" the segmenter's P(neoplastic | polyp) under `temperature` (calls unchanged)."""
    return [{**r, "final": float(sigmoid(z / temperature))} for r, z in zip(records, raw_logits(records), strict=True)]


def call_right(records: list[dict]) -> np.ndarray:
    return np.array([(r["final"] >= 0.5) == bool(r["neoplastic"]) for r in records], dtype=float)


def fit_correctness(records: list[dict], penalty: float = 1e-2) -> np.ndarray:
    """Logistic regression weights for P(call right | features), each true class weighted equally."""
    x, y = features(records), call_right(records)
    neo = np.array([r["neoplastic"] for r in records], dtype=bool)
    w = np.where(neo, 0.5 / max(neo.sum(), 1), 0.5 / max((~neo).sum(), 1))
    scale = x.std(0)
    scale[scale == 0] = 1.0

    def loss(beta):
        z = (x / scale) @ beta
        return float(np.sum(w * (np.logaddexp(0, z) - y * z)) + penalty * np.sum(beta[:-1] ** 2))

    beta = minimize(loss, np.zeros(x.shape[1]), method="L-BFGS-B").x
    return beta / scale


def kept_figures(records: list[dict], held: np.ndarray) -> dict:
    kept = [r for r, h in zip(records, held, strict=True) if not h]
    accuracy = class_accuracies(kept, lambda r: r["final"]) if kept else {"balanced_accuracy": float("nan")}
    return {"held_back": float(np.mean(held)) if len(held) else float("nan"), **accuracy}


def hold_back(records: list[dict], rule: dict) -> np.ndarray:
    """Which calls a rule flags uncertain: a band of P(neoplastic | polyp), or a cut on the correctness model."""
    if rule["kind"] == "band":
        p = np.array([r["final"] for r in records])
        return (p >= rule["low"]) & (p <= rule["high"])
    return sigmoid(features(records) @ np.asarray(rule["beta"])) < rule["cut"]


def choose_doubt_rule(train: list[dict], kind: str) -> dict:
    """The rule of `kind` that holds back the fewest calls while the rest reach TARGET_ACCURACY balanced on
    `train`; where none does within MAX_HELD_BACK, the most accurate within it."""
    if kind == "band":
        lows = np.round(np.arange(0.05, 0.51, 0.05), 2)
        highs = np.round(np.arange(0.5, 0.96, 0.05), 2)
        rules = [{"kind": "band", "low": float(lo), "high": float(hi)} for lo in lows for hi in highs]
    else:
        beta = fit_correctness(train).tolist()
        rules = [{"kind": "model", "beta": beta, "cut": float(c)} for c in np.round(np.arange(0.0, 1.0, 0.02), 2)]
    scored = [(rule, kept_figures(train, hold_back(train, rule))) for rule in rules]
    reaching = [(r, f) for r, f in scored if f["balanced_accuracy"] >= TARGET_ACCURACY]
    if reaching:
        return min(reaching, key=lambda rf: rf[1]["held_back"])[0]
    within = [(r, f) for r, f in scored if f["held_back"] <= MAX_HELD_BACK]
    return max(within, key=lambda rf: rf[1]["balanced_accuracy"])[0]


def accuracy_at_share(records: list[dict], scores: np.ndarray, share: float) -> float:
    """Balanced accuracy of the calls left after holding back the `share` with the lowest scores."""
    order = np.argsort(scores, kind="stable")
    held = np.zeros(len(records), bool)
    held[order[: int(round(share * len(records)))]] = True
    return kept_figures(records, held)["balanced_accuracy"]


def spread(values) -> dict[str, float]:
    values = np.array(values, dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "min": float(values.min()), "max": float(values.max())}


def cell(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def load_fold(fold_dir: Path, args, cache: Path | None) -> dict:
    """One fold's held-out predictions (stills' records and scores, clips' frame-by-frame results)."""
    import pickle  # the benchmark's own cache of its own objects, never a model or a user's file

    cached = cache / f"{fold_dir.name}.pkl" if cache else None
    if cached and cached.is_file():
        return pickle.loads(cached.read_bytes())
    model = NeoPolypUNet.from_pretrained(fold_dir / "best").optimize_for_inference()
    samples = select_samples(args.data_dir, read_ids(fold_dir / "fold_split.json"))
    started = time.perf_counter()
    stills = fold_stills(model, samples)
    with tempfile.TemporaryDirectory() as tmp:
        clips = fold_clips(model, samples, args, Path(tmp))
    fold = {"name": fold_dir.name, "config": model.config, **stills, "clips": clips}
    frames = sum(len(t) for _, t, _ in clips)
    print(
        f"{fold_dir.name}: {len(samples)} held-out frames, {len(stills['records'])} found-lesion calls, "
        f"{len(clips)} clips of {frames} frames ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    if cached:
        write_atomic(cached, lambda tmp: tmp.write_bytes(pickle.dumps(fold)))
    return fold


def main(args: argparse.Namespace) -> dict:
    fold_dirs = sorted(p for p in Path(args.folds_dir).glob("fold*") if (p / "best").is_dir())
    if len(fold_dirs) < 2:
        raise SystemExit(f"error: '{args.folds_dir}' holds {len(fold_dirs)} trained fold(s); 2 or more are needed")
    cache = Path(args.cache) if args.cache else None
    folds = [load_fold(d, args, cache) for d in fold_dirs]
    n = len(folds)
    report: dict = {
        "folds": [f["name"] for f in folds],
        "clip_size": args.size,
        "frames_per_scene": args.frames_per_scene,
    }

    # Stills: the default predict()'s figures per held-out fold, and what the lesion numbering fix changed.
    keys = (
        "dice_neoplastic",
        "dice_non_neoplastic",
        "dice_mean",
        "lesion_recall_neoplastic",
        "lesion_recall_non_neoplastic",
        "final_balanced_accuracy",
        "lesion_ece_final",
        "uncertain_call_share",
    )
    report["stills"] = {k: spread([f["scores"].get(k, float("nan")) for f in folds]) for k in keys}
    report["balanced_accuracy_before_numbering_fix"] = spread(
        [f["balanced_accuracy_whole_frame_labels"]["balanced_accuracy"] for f in folds]
    )

    # The track rule.
    names = list(TRACK_GRID)
    grid = [dict(zip(names, v, strict=True)) for v in itertools.product(*TRACK_GRID.values())]
    today = {
        "half_life": 30.0,
        "hysteresis": 0.1,
        "class_threshold": 0.5,
        "uncertain_shows": "track",
        "min_agreement": 0.0,
    }
    per_fold = []
    for f in folds:
        started = time.perf_counter()
        per_fold.append(
            {
                "plain": track_rule_figures(f["clips"], None, f["config"]),
                "grid": [track_rule_figures(f["clips"], s, f["config"]) for s in grid],
            }
        )
        print(f"{f['name']}: {len(grid)} tracker rules in {time.perf_counter() - started:.0f} s", flush=True)
    today_index = grid.index(today)
    held_out = []
    for k in range(n):
        chosen = choose_track_rule(per_fold, [j for j in range(n) if j != k])
        held_out.append(
            {
                "fold": folds[k]["name"],
                "chosen": grid[chosen],
                "tracked": per_fold[k]["grid"][chosen],
                "today": per_fold[k]["grid"][today_index],
                "frame_by_frame": per_fold[k]["plain"],
            }
        )
    final_rule = grid[choose_track_rule(per_fold, list(range(n)))]
    video = {}
    for label in ("tracked", "today", "frame_by_frame"):
        video[label] = {key: spread([h[label][key] for h in held_out]) for key in held_out[0][label]}
    for label in ("tracked", "today"):
        video[f"flicker_ratio_{label}"] = spread([flicker_ratio(h[label], h["frame_by_frame"]) for h in held_out])
    report["track_rule"] = {
        "held_out": held_out,
        "summary": video,
        "chosen_on_all_folds": final_rule,
        "screened": [{"settings": s, "per_fold": [p["grid"][i] for p in per_fold]} for i, s in enumerate(grid)],
        "frame_by_frame_per_fold": [p["plain"] for p in per_fold],
    }

    # Doubt: calibration (a temperature on the other folds' calls, as train.py fits one on its held-out split)
    # and the uncertain rule, chosen on the calibrated probabilities (the config's uncertain_range is read so).
    doubt = {"held_out": []}
    for k in range(n):
        train_raw = [r for j in range(n) if j != k for r in folds[j]["records"]]
        test_raw = folds[k]["records"]
        temperature = fit_temperature(raw_logits(train_raw), [r["neoplastic"] for r in train_raw])
        train, test = calibrated(train_raw, temperature), calibrated(test_raw, temperature)
        truth_test = [r["neoplastic"] for r in test]
        row = {
            "fold": folds[k]["name"],
            "calls": len(test),
            "temperature": temperature,
            "ece_before": expected_calibration_error(sigmoid(raw_logits(test_raw)), truth_test),
            "ece_after": expected_calibration_error([r["final"] for r in test], truth_test),
            "all_calls": kept_figures(test, np.zeros(len(test), bool)),
        }
        for kind in ("band", "model"):
            rule = choose_doubt_rule(train, kind)
            row[kind] = {"rule": rule, **kept_figures(test, hold_back(test, rule))}
        margin = np.abs(raw_logits(test_raw))
        model_scores = sigmoid(features(test) @ fit_correctness(train))
        for share in (0.1, 0.2, 0.3):
            row[f"margin_accuracy_at_{share}"] = accuracy_at_share(test, margin, share)
            row[f"model_accuracy_at_{share}"] = accuracy_at_share(test, model_scores, share)
        doubt["held_out"].append(row)
    rows = doubt["held_out"]
    doubt["summary"] = {
        "all_calls_balanced": spread([r["all_calls"]["balanced_accuracy"] for r in rows]),
        "ece_before": spread([r["ece_before"] for r in rows]),
        "ece_after": spread([r["ece_after"] for r in rows]),
        **{
            f"{kind}_{m}": spread([r[kind][m] for r in rows])
            for kind in ("band", "model")
            for m in ("balanced_accuracy", "held_back")
        },
        **{
            f"{src}_accuracy_at_{s}": spread([r[f"{src}_accuracy_at_{s}"] for r in rows])
            for src in ("margin", "model")
            for s in (0.1, 0.2, 0.3)
        },
    }
    all_records = [r for f in folds for r in f["records"]]
    temperature = fit_temperature(raw_logits(all_records), [r["neoplastic"] for r in all_records])
    doubt["temperature_on_all_folds"] = temperature
    band = choose_doubt_rule(calibrated(all_records, temperature), "band")
    doubt["band_chosen_on_all_folds"] = band
    doubt["band_chosen_on_all_folds_raw"] = [
        float(sigmoid(logit(b) * temperature)) for b in (band["low"], band["high"])
    ]
    report["doubt"] = doubt

    print(f"\nOut-of-fold stills ({n} folds, default predict(), no TTA): mean ± std over held-out folds\n")
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    print("| " + " | ".join(cell(report["stills"][k]) for k in keys) + " |")
    before = report["balanced_accuracy_before_numbering_fix"]
    print(f"\nfound-lesion balanced accuracy with the old whole-frame numbering: {cell(before)}")
    print(f"\nOut-of-fold clips ({args.size}, {args.frames_per_scene} frames a scene), leave-one-fold-out rule\n")
    print("| rule | Dice neoplastic | Dice non-neoplastic | flicker per 100 | flips per 1000 frames |")
    print("|---|---|---|---|---|")
    for label in ("frame_by_frame", "today", "tracked"):
        s = video[label]
        print(
            f"| {label} | {cell(s['dice_neoplastic'])} | {cell(s['dice_non_neoplastic'])} "
            f"| {cell(s['flicker_per_100'])} | {cell(s['flips_per_1000_frames'])} |"
        )
    print(
        f"\nflicker / frame-by-frame flicker: tracked {cell(video['flicker_ratio_tracked'])}, "
        f"today's rule {cell(video['flicker_ratio_today'])}"
    )
    for h in held_out:
        print(f"{h['fold']}: chosen on the other folds {h['chosen']}")
    print(f"chosen on all folds: {final_rule}")
    s = doubt["summary"]
    print("\nDoubt (leave-one-fold-out): balanced accuracy of the calls kept, and the share held back\n")
    print(
        f"all calls: {cell(s['all_calls_balanced'])}; lesion ECE {cell(s['ece_before'])} -> "
        f"{cell(s['ece_after'])} after a temperature"
    )
    for kind in ("band", "model"):
        print(f"{kind}: kept {cell(s[f'{kind}_balanced_accuracy'])}, held back {cell(s[f'{kind}_held_back'])}")
    for share in (0.1, 0.2, 0.3):
        print(
            f"holding back {share:.0%}: by margin {cell(s[f'margin_accuracy_at_{share}'])}, "
            f"by correctness model {cell(s[f'model_accuracy_at_{share}'])}"
        )
    print(
        f"temperature on all folds {doubt['temperature_on_all_folds']:.2f}; band chosen on all folds (calibrated): "
        f"{doubt['band_chosen_on_all_folds']}, the segmenter's raw probability: {doubt['band_chosen_on_all_folds_raw']}"
    )
    if args.output:
        write_text_atomic(args.output, json.dumps(report, indent=1, default=float))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
