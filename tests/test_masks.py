import numpy as np
import pytest
from PIL import Image

from neopolyp_hf import colorize_mask, decode_mask, load_image, overlay_mask
from neopolyp_hf.classes import CLASS_COLORS


def test_decode_exact_palette_colours():
    rgb = np.array([[[0, 0, 0], [255, 0, 0], [0, 255, 0]]], np.uint8)
    assert decode_mask(rgb).tolist() == [[0, 1, 2]]


def test_decode_tolerates_jpeg_noise(tmp_path):
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, (64, 80)).astype(np.uint8)
    classes = np.kron(classes, np.ones((8, 8), np.uint8))  # blocks, like real masks
    Image.fromarray(colorize_mask(classes)).save(tmp_path / "m.jpeg", quality=75)
    noisy = np.asarray(Image.open(tmp_path / "m.jpeg").convert("RGB"))
    assert len(np.unique(noisy.reshape(-1, 3), axis=0)) > 20  # JPEG really made it noisy
    decoded = decode_mask(noisy)
    interior = np.ones_like(classes, bool)  # block interiors: away from the ringing at edges
    for axis in (0, 1):
        interior &= np.roll(classes, 1, axis) == classes
        interior &= np.roll(classes, -1, axis) == classes
    assert (decoded[interior] == classes[interior]).mean() > 0.999
    assert (decoded == classes).mean() > 0.97


def test_round_trip_and_shape_errors():
    classes = np.random.default_rng(1).integers(0, 3, (17, 23)).astype(np.uint8)
    assert np.array_equal(decode_mask(colorize_mask(classes)), classes)
    with pytest.raises(ValueError, match="HxWx3"):
        decode_mask(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="no colour"):
        colorize_mask(np.full((2, 2), 5, np.uint8))


def test_overlay_blends_only_polyp_pixels():
    image = np.full((4, 4, 3), 100, np.uint8)
    classes = np.zeros((4, 4), np.uint8)
    classes[0, 0], classes[1, 1] = 1, 2
    out = np.asarray(overlay_mask(image, classes, CLASS_COLORS, alpha=0.5))
    assert out[0, 0].tolist() == [178, 50, 50]  # halfway to red
    assert out[1, 1].tolist() == [50, 178, 50]
    assert (out[2:] == 100).all()


def test_overlay_matches_the_whole_frame_blend_on_random_masks():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    classes = np.zeros((60, 80), np.uint8)
    classes[10:30, 50:70] = rng.integers(0, 3, (20, 20))
    expected = image.copy()
    colours = colorize_mask(classes).astype(np.float64)
    blended = np.round(0.3 * image + 0.7 * colours).astype(np.uint8)
    expected[classes > 0] = blended[classes > 0]
    out = np.asarray(overlay_mask(image, classes, CLASS_COLORS, alpha=0.7)).astype(int)
    assert np.abs(out - expected).max() <= 1  # OpenCV rounds its saturating blend
    assert (out[classes == 0] == image[classes == 0]).all()


def test_real_masks_decode_and_round_trip(real_data):
    paths = sorted((real_data / "train_gt" / "train_gt").glob("*.jpeg"))
    assert len(paths) >= 100
    noisiest = 0
    for path in paths[::12]:  # a spread of 50 real masks
        rgb = load_image(path)
        packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        noisiest = max(noisiest, len(np.unique(packed)))
        classes = decode_mask(rgb)
        assert classes.shape == rgb.shape[:2]  # decoded at full resolution
        assert set(np.unique(classes).tolist()) <= {0, 1, 2}
        assert np.array_equal(decode_mask(colorize_mask(classes)), classes)
        # Where the JPEG colour is clearly one class, the decoder agrees with a plain threshold.
        red = (rgb[..., 0] > 200) & (rgb[..., 1] < 50) & (rgb[..., 2] < 50)
        green = (rgb[..., 1] > 200) & (rgb[..., 0] < 50) & (rgb[..., 2] < 50)
        assert (classes[red] == 1).all() and (classes[green] == 2).all()
    assert noisiest > 100  # these really are noisy JPEG masks
