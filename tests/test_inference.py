import cv2
import numpy as np
import pytest

from neopolyp_hf.inference import class_scores, predict_images, scores_to_mask, softmax


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
    config = {
        "input_size": 32,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "class_names": ["bg", "a", "b"],
        "class_colors": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
    }
    weights = rng.standard_normal((3, 3)).astype(np.float32)

    def forward(x):
        return np.einsum("kc,nchw->nkhw", weights, x)

    together = predict_images(forward, config, images)
    for image, prediction in zip(images, together, strict=True):
        alone = predict_images(forward, config, [image])[0]
        assert np.array_equal(prediction.mask, alone.mask) and prediction.mask.shape == image.shape[:2]
        assert prediction.confidence.min() >= 0 and prediction.confidence.max() <= 1
