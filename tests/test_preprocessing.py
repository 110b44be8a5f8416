import io

import numpy as np
import pytest
from helpers import png_header_only
from PIL import Image

from neopolyp_hf import ImageLoadError, load_image
from neopolyp_hf.config import ModelConfig
from neopolyp_hf.inference import predict_images
from neopolyp_hf.training.data import SegmentationDataset, build_cache, find_pairs


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _png_bytes(Image.fromarray(pixels), format="JPEG", exif=exif.tobytes(), quality=95)
    upright = load_image(data)
    assert upright.shape == (40, 20, 3)  # width and height swapped
    assert upright[:20].mean() > 200 and upright[20:].mean() < 50  # white half now on top


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (7, 5), 128),
        Image.new("RGBA", (7, 5), (255, 0, 0, 255)),
        Image.new("P", (7, 5), 3),
        Image.new("CMYK", (7, 5), (0, 255, 255, 0)),
        Image.fromarray(np.full((5, 7), 40000, np.uint16)),
        Image.new("LA", (7, 5), (200, 255)),
    ],
    ids=["L", "RGBA", "P", "CMYK", "I16", "LA"],
)
def test_modes_become_rgb(image):
    for source in (image, _png_bytes(image, format="TIFF" if image.mode == "CMYK" else "PNG")):
        rgb = load_image(source)
        assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8


def test_rgba_colour_is_kept():
    assert load_image(Image.new("RGBA", (2, 2), (255, 0, 0, 255)))[0, 0].tolist() == [255, 0, 0]


def test_sixteen_bit_range_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 7 * 5).reshape(5, 7).astype(np.uint16)
    rgb = load_image(ramp)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and len(np.unique(rgb)) > 20


def test_bad_inputs_name_the_problem(tmp_path):
    missing = tmp_path / "nope.jpeg"
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(missing)
    text = tmp_path / "notes.jpeg"
    text.write_text("not an image")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(text)
    truncated = tmp_path / "cut.jpeg"
    truncated.write_bytes(_png_bytes(Image.new("RGB", (200, 200), "red"), format="JPEG")[:300])
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5000)
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((4, 4, 5), np.uint8))


def test_training_eval_transform_equals_predict_preprocessing(synthetic_data):
    """The tensor the model sees in validation is bit-identical to the one `predict` feeds it."""
    config = ModelConfig(input_size=96).to_dict()
    samples = find_pairs(synthetic_data)[:3]
    dataset = SegmentationDataset(build_cache(samples, 96), config["mean"], config["std"])
    for index, sample in enumerate(samples):
        seen = []

        def forward(batch, seen=seen):
            seen.append(batch.copy())
            return np.zeros((batch.shape[0], 3, 96, 96), np.float32)

        predict_images(forward, config, [sample.image_path])
        train_tensor = dataset[index][0].numpy()
        assert seen[0].shape == (1, 3, 96, 96)
        assert np.array_equal(seen[0][0], train_tensor)


def test_decompression_bomb_is_an_image_load_error_with_the_pixel_count(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(50_000, 50_000))
    with pytest.raises(ImageLoadError, match="bomb.png.*decompression bomb.*2500000000 pixels"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="81,000,000 pixels, over the limit"):
        load_image(png_header_only(9_000, 9_000))  # under Pillow's limit, over ours


def test_formats_outside_the_allow_list_are_refused_by_name(tmp_path):
    eps = tmp_path / "scan.eps"
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n")
    with pytest.raises(ImageLoadError, match="scan.eps' is in EPS format, which is not accepted"):
        load_image(eps)
    fits = tmp_path / "frame.fits"
    header = "".join(card.ljust(80) for card in ["SIMPLE  = T", "BITPIX  = 8", "NAXIS   = 2", "NAXIS1  = 4"])
    header += "".join(card.ljust(80) for card in ["NAXIS2  = 4", "END"])
    fits.write_bytes(header.ljust(2880).encode() + bytes(2880))
    with pytest.raises(ImageLoadError, match="FITS format, which is not accepted"):
        load_image(fits)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), "red").save(buffer, format="WEBP")
    assert load_image(buffer.getvalue()).shape == (6, 8, 3)  # on the list
    with pytest.raises(ImageLoadError, match="WEBP format"):
        load_image(buffer.getvalue(), formats=("PNG",))
