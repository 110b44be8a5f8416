import cv2
import numpy as np
import pytest

from neopolyp_hf.config import ModelConfig
from neopolyp_hf.inference import Prediction, class_scores, predict_images, scores_to_mask, softmax


def _smooth_scores(classes: int, size: int = 32, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal((size, size, classes)).astype(np.float32)
    return (cv2.GaussianBlur(noise, (0, 0), 2) * 10).reshape(size, size, classes).transpose(2, 0, 1)


@pytest.mark.parametrize("classes", [2, 3, 4])
def test_mask_is_the_argmax_of_upsampled_scores(classes):
    scores = _smooth_scores(classes)
    full = cv2.resize(np.ascontiguousarray(scores.transpose(1, 2, 0)), (97, 61), interpolation=cv2.INTER_LINEAR)
    expected = full.reshape(61, 97, classes).argmax(axis=2)
    mask = scores_to_mask(scores, 61, 97)
    assert mask.shape == (61, 97)
    assert (mask == expected).mean() > 0.999  # float rounding may flip an exact tie, nothing more


@pytest.mark.parametrize("seed", range(4))
def test_mask_of_a_small_polyp_is_upsampled_in_its_box_only_and_matches_the_full_resize(seed):
    rng = np.random.default_rng(seed)
    scores = np.zeros((3, 32, 32), np.float32)
    scores[0] = 4.0  # background everywhere, but for a blob or two somewhere
    for _ in range(rng.integers(1, 3)):
        y, x = rng.integers(0, 32, 2)
        scores[int(rng.integers(1, 3)), max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = 8.0
    scores += rng.normal(0, 0.5, scores.shape).astype(np.float32)
    height, width = 203, 157  # ratios that are not whole numbers
    full = cv2.resize(np.ascontiguousarray(scores.transpose(1, 2, 0)), (width, height), interpolation=cv2.INTER_LINEAR)
    expected = full.argmax(axis=2)
    mask = scores_to_mask(scores, height, width)
    assert (expected > 0).any() and (mask == expected).mean() > 0.999
    assert not scores_to_mask(np.stack([np.ones((8, 8)), -np.ones((8, 8)), -np.ones((8, 8))]), 30, 40).any()


def test_flip_tta_undoes_each_flip():
    """A forward that is exactly flip-equivariant gives the same scores with and without TTA."""
    rng = np.random.default_rng(1)
    batch = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)

    def forward(x):
        return np.stack([x[:, 0] * 2, x[:, 1], -x[:, 2]], axis=1)

    plain = softmax(class_scores(forward, batch), axis=1)
    averaged = np.exp(class_scores(forward, batch, tta=True))
    assert np.allclose(plain, averaged, atol=1e-5)


def test_batched_prediction_equals_one_by_one():
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (40 + 7 * i, 50, 3)).astype(np.uint8) for i in range(3)]
    config = ModelConfig(input_size=32, mean=[0.5] * 3, std=[0.25] * 3).to_dict()
    weights = rng.standard_normal((3, 3)).astype(np.float32)

    def forward(x):
        return np.einsum("kc,nchw->nkhw", weights, x)

    together = predict_images(forward, config, images)
    for image, prediction in zip(images, together, strict=True):
        alone = predict_images(forward, config, [image])[0]
        assert np.array_equal(prediction.mask, alone.mask) and prediction.mask.shape == image.shape[:2]
        assert prediction.confidence.min() >= 0 and prediction.confidence.max() <= 1


def _prediction(scores: np.ndarray, **kwargs) -> Prediction:
    height, width = scores.shape[1:]
    return Prediction(
        image=np.zeros((height, width, 3), np.uint8),
        mask=scores.argmax(0).astype(np.uint8),
        scores=scores,
        class_names=["background", "neoplastic", "non_neoplastic"],
        class_colors=[[0, 0, 0], [255, 0, 0], [0, 255, 0]],
        **kwargs,
    )


def test_uncertainty_is_zero_when_sure_and_highest_at_an_even_split():
    scores = np.zeros((3, 4, 6), np.float32)
    scores[0, :, :2] = 60.0  # background certain
    scores[1, :, 2:4] = 60.0  # neoplastic certain
    scores[1, :, 4] = scores[2, :, 4] = 30.0  # a two-way tie between the polyp classes; column 5: three-way tie
    prediction = _prediction(scores)
    uncertainty = prediction.uncertainty
    assert uncertainty.shape == (4, 6) and uncertainty.dtype == np.float32
    assert np.allclose(uncertainty[:, :4], 0.0, atol=1e-6)
    assert np.allclose(uncertainty[:, 5], 1.0, atol=1e-6) and uncertainty.max() <= 1.0
    assert 0.55 < uncertainty[0, 4] < 0.7  # two of three classes: log 2 / log 3 = 0.63
    probabilities = prediction.probabilities
    assert probabilities.shape == (3, 4, 6) and np.allclose(probabilities.sum(0), 1.0, atol=1e-5)


def test_the_uncertainty_view_is_the_heat_map_of_the_uncertainty():
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 2, (3, 8, 8)).astype(np.float32)
    prediction = Prediction(
        image=rng.integers(0, 256, (24, 32, 3), dtype=np.uint8),
        mask=np.zeros((24, 32), np.uint8),
        scores=scores,
        class_names=["background", "neoplastic", "non_neoplastic"],
        class_colors=[[0, 0, 0], [255, 0, 0], [0, 255, 0]],
    )
    view = np.asarray(prediction.render_uncertainty(alpha=1.0), np.int16)  # the heat map alone
    levels = np.round(prediction.uncertainty * 255).astype(np.uint8)  # upsampled, then quantized
    heat = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB).astype(np.int16)
    assert view.shape == (24, 32, 3) and np.abs(view - heat).mean() < 2  # quantized before upsampling: close


def test_tta_disagreement_raises_the_uncertainty():
    def flip_sensitive(batch):  # sure of neoplastic on the identity, of non-neoplastic when flipped
        n = batch.shape[0] // 3
        out = np.zeros((batch.shape[0], 3, *batch.shape[2:]), np.float32)
        out[:n, 1] = 40.0
        out[n:, 2] = 40.0
        return out

    batch = np.zeros((1, 3, 8, 8), np.float32)
    plain = _prediction(flip_sensitive(np.concatenate([batch] * 3))[0])
    tta = _prediction(class_scores(flip_sensitive, batch, tta=True)[0])
    assert plain.uncertainty.max() < 1e-6 and tta.uncertainty.min() > 0.5
