"""The serving loader: backend choice, the cached ONNX export, provenance and display tables."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from neopolyp_hf import ConfigError, ImageLoadError, ModelSourceError, NeoPolypUNet
from neopolyp_hf.inference import uncertainty_colors
from neopolyp_hf.onnx.backend import OnnxSegmenter
from neopolyp_hf.onnx.loading import load_segmenter
from neopolyp_hf.serving.settings import SpaceSettings
from neopolyp_hf.serving.space import (
    TRACK_TABLE_HEADERS,
    KeptPrediction,
    OutputStore,
    class_color_map,
    frame_sentences,
    legend_html,
    limit_malloc_arenas,
    percentages_sentences,
    share_text,
    timeline_plot_rows,
    track_table,
    uncertainty_scale_html,
)


def test_auto_backend_on_cpu_is_a_cached_onnx_export(random_model, tmp_path):
    random_model.save_pretrained(tmp_path / "m")
    cache = tmp_path / "cache"
    segmenter, info = load_segmenter(str(tmp_path / "m"), onnx_cache=cache)
    assert isinstance(segmenter, OnnxSegmenter) and (info.backend, info.device, info.precision) == (
        "onnx",
        "cpu",
        "fp32",
    )
    (exported,) = cache.iterdir()
    stamp = exported.stat().st_mtime_ns
    again, _ = load_segmenter(str(tmp_path / "m"), onnx_cache=cache)  # a restart: the file is reused
    assert list(cache.iterdir()) == [exported] and exported.stat().st_mtime_ns == stamp
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3)).astype(np.uint8)
    assert (again.predict(image).mask == random_model.predict(image).mask).mean() > 0.999

    torch.manual_seed(1)  # other weights, another file
    NeoPolypUNet(input_size=64).save_pretrained(tmp_path / "other")
    load_segmenter(str(tmp_path / "other"), onnx_cache=cache)
    assert len(list(cache.iterdir())) == 2 and not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_torch_backend_and_bad_choices(random_model, tmp_path):
    random_model.save_pretrained(tmp_path / "m")
    model, info = load_segmenter(str(tmp_path / "m"), backend="torch")
    assert isinstance(model, NeoPolypUNet) and info.backend == "torch" and info.revision == "local folder"
    with pytest.raises(ModelSourceError, match="backend must be one of"):
        load_segmenter(str(tmp_path / "m"), backend="tensorrt")
    with pytest.raises(ModelSourceError, match="needs the onnx backend"):
        load_segmenter(str(tmp_path / "m"), backend="torch", precision="int8")
    with pytest.raises(ModelSourceError, match="model_int8.onnx"):
        load_segmenter(str(tmp_path / "m"), precision="int8")  # no INT8 export published beside it


def test_an_onnx_file_serves_with_its_own_precision(random_model, tmp_path):
    from neopolyp_hf.onnx.backend import export_onnx

    path = export_onnx(random_model, tmp_path / "m.onnx")
    segmenter, info = load_segmenter(str(path))
    assert isinstance(segmenter, OnnxSegmenter) and (info.backend, info.precision) == ("onnx", "fp32")
    os.remove(path)
    with pytest.raises(ModelSourceError, match="m.onnx"):
        load_segmenter(str(path))


def test_kept_prediction_is_small_and_renders_the_same_overlay_and_uncertainty(random_model, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    frame = tmp_path / "frame.png"
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(frame)
    prediction = random_model.predict(frame)
    prediction.mask[100:200, 50:150] = 2  # some of each class, whatever the untrained model says
    prediction.mask[:40, :60] = 1
    kept = KeptPrediction.of(prediction, str(frame))
    np.testing.assert_array_equal(kept.mask, prediction.mask)
    assert len(kept.polyp_png) < prediction.mask.nbytes / 10  # far below the frame and the mask in memory
    expected = np.asarray(prediction.render_overlay(0.3))
    np.testing.assert_array_equal(np.asarray(kept.render_overlay(0.3)), expected)
    # The uncertainty view, rendered later from what was kept, is the prediction's own.
    assert len(kept.uncertainty_png) <= random_model.config["input_size"] ** 2 + 1000
    np.testing.assert_array_equal(np.asarray(kept.render_uncertainty()), np.asarray(prediction.render_uncertainty()))
    empty = dataclasses.replace(prediction, mask=np.zeros_like(prediction.mask))
    np.testing.assert_array_equal(KeptPrediction.of(empty, str(frame)).mask, empty.mask)
    frame.unlink()  # the upload aged out of the cache: a clear error, not a crash
    with pytest.raises(ImageLoadError, match="does not exist"):
        kept.render_overlay(0.5)


def test_percentages_read_as_sentences():
    summary = {
        "neoplastic": {"percent_of_image": 3.25, "percent_of_polyp_area": 65.0},
        "non_neoplastic": {"percent_of_image": 1.75, "percent_of_polyp_area": 35.0},
    }
    assert percentages_sentences(summary) == (
        "- **Neoplastic**: 3.2% of the image, 65% of the polyp area\n"
        "- **Non-neoplastic**: 1.8% of the image, 35% of the polyp area"
    )
    empty = {name: {"percent_of_image": 0.0, "percent_of_polyp_area": 0.0} for name in summary}
    assert percentages_sentences(empty) == "No polyp pixels found."


def test_output_store_names_each_file_uniquely_and_keeps_under_its_cap(tmp_path):
    store = OutputStore(tmp_path / "outputs", max_bytes=350)

    def write(path):
        path.write_bytes(b"x" * 100)
        return path

    paths = [store.save("neopolyp_overlay", ".jpeg", write) for _ in range(10)]
    assert len(set(paths)) == 10 and all(p.name.startswith("neopolyp_overlay-") for p in paths)
    left = sorted((tmp_path / "outputs").iterdir())
    assert left == sorted(paths[-3:])  # the newest three (300 bytes); the oldest went first

    def fail(path):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.save("neopolyp_overlay", ".jpeg", fail)
    assert sorted((tmp_path / "outputs").iterdir()) == left  # nothing half-made is left
    with pytest.raises(OSError, match="disk full"):
        store.save("neopolyp_mask", ".png", fail, plain_name=True)
    assert sorted((tmp_path / "outputs").iterdir()) == left  # not even an empty folder

    masks = [store.save("neopolyp_mask", ".png", write, plain_name=True) for _ in range(4)]
    assert {p.name for p in masks} == {"neopolyp_mask.png"} and len({p.parent for p in masks}) == 4
    assert sorted((tmp_path / "outputs").iterdir()) == sorted(p.parent for p in masks[-3:])  # folders go too


def test_malloc_arenas_are_capped_unless_the_environment_says_otherwise(monkeypatch):
    import platform

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas(2) == (platform.libc_ver()[0] == "glibc")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the operator's own setting wins
    assert limit_malloc_arenas(2) is False


def test_a_share_that_is_not_zero_never_reads_zero():
    summary = {
        "neoplastic": {"percent_of_image": 0.04, "percent_of_polyp_area": 0.3},
        "non_neoplastic": {"percent_of_image": 12.4, "percent_of_polyp_area": 99.7},
    }
    assert percentages_sentences(summary) == (
        "- **Neoplastic**: < 0.1% of the image, < 1% of the polyp area\n"
        "- **Non-neoplastic**: 12.4% of the image, 100% of the polyp area"
    )
    assert share_text(0.0, 1) == "0.0%" and share_text(0.1, 1) == "0.1%"
    assert frame_sentences({"neoplastic": 0.01, "non_neoplastic": 0.0}) == (
        "- **Neoplastic**: < 0.1% of the frame\n- **Non-neoplastic**: 0.0% of the frame"
    )


def test_one_display_name_and_colour_per_class_everywhere():
    assert class_color_map() == {"Neoplastic": "#ff0000", "Non-neoplastic": "#00ff00"}  # the masks' red and green
    legend = legend_html("camera-legend")
    assert 'id="camera-legend"' in legend and "#ff0000" in legend and "Non-neoplastic" in legend
    assert "non_neoplastic" not in legend and "non-neoplastic" not in legend
    rows = timeline_plot_rows([[0, "0.000", "1.5000", "0.0000", "1"], [1, "0.125", "2.0000", "0.5000", "1 2"]])
    assert rows == [
        (0.0, 1.5, "Neoplastic"),
        (0.125, 2.0, "Neoplastic"),
        (0.0, 0.0, "Non-neoplastic"),
        (0.125, 0.5, "Non-neoplastic"),
    ]
    assert {name for _, _, name in rows} == set(class_color_map())  # every plotted class has its colour


def test_the_track_table_reads_in_seconds_with_display_names():
    timeline = [[0, "0.000", "0", "0", ""], [4, "0.500", "0", "0", ""], [9, "1.125", "0", "0", ""]]
    tracks = [[3, "non_neoplastic", "0.2100", "no", 4, 9, 6, 5400], [1, "neoplastic", "0.5000", "yes", 0, 4, 2, 300]]
    assert TRACK_TABLE_HEADERS[4:6] == ["first seen (s)", "last seen (s)"]
    assert track_table(tracks, timeline, min_frames=1) == (
        [[3, "Non-neoplastic", 0.21, "no", 0.5, 1.125, 6, 5400], [1, "Neoplastic", 0.5, "yes", 0.0, 0.5, 2, 300]],
        0,
    )
    # A fragment seen in 2 frames is left out of the page's table, and counted.
    assert track_table(tracks, timeline) == ([[3, "Non-neoplastic", 0.21, "no", 0.5, 1.125, 6, 5400]], 1)


def test_the_uncertainty_scale_uses_the_views_colours():
    scale = uncertainty_scale_html(steps=3)
    ends = uncertainty_colors(np.array([[0, 128, 255]], np.uint8))[0]
    for color in ends:
        assert "#{:02x}{:02x}{:02x}".format(*map(int, color)) in scale
    assert "0: one class near certain" in scale and "1: the classes equally likely" in scale


@pytest.mark.parametrize(
    ("value", "expected"),
    [("20000000", 20_000_000), ("50MB", 50_000_000), ("50 mb", 50_000_000), ("1.5GB", 1_500_000_000), ("64KiB", 65536)],
)
def test_sizes_in_the_environment_take_a_unit(value, expected):
    assert SpaceSettings.from_environ({"NEOPOLYP_MAX_FILE_SIZE": value}).max_file_size == expected


BAD_NUMBERS = ["inf", "nan", "-1", "0", "fifty", "1e400"]


@pytest.mark.parametrize("value", [*BAD_NUMBERS, "50 parsecs", "-5MB"])
def test_a_size_that_is_not_one_names_the_variable_and_units(value):
    with pytest.raises(
        ConfigError, match=r"NEOPOLYP_MAX_FILE_SIZE=.* is not a size: .*\(B, KB, MB, GB, KiB, MiB, GiB\)"
    ):
        SpaceSettings.from_environ({"NEOPOLYP_MAX_FILE_SIZE": value})


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize(
    ("variable", "unit"),
    [
        ("NEOPOLYP_MAX_PIXELS", "pixels"),
        ("NEOPOLYP_CACHE_SECONDS", "seconds"),
        ("NEOPOLYP_QUEUE_SIZE", "requests"),
        ("NEOPOLYP_MAX_OUTPUT_MB", "megabytes"),
        ("NEOPOLYP_MAX_SESSIONS", "sessions"),
        ("NEOPOLYP_MAX_VIDEO_SECONDS", "seconds"),
    ],
)
def test_a_limit_that_is_not_one_names_the_variable_and_never_switches_off(variable, unit, value):
    """nan once passed the video length check and switched the limit off; inf ended in an OverflowError."""
    with pytest.raises(ConfigError, match=f"{variable}='{value}' must be a positive number of {unit}"):
        SpaceSettings.from_environ({variable: value})


def test_settings_read_every_variable_and_refuse_unknown_choices(tmp_path):
    settings = SpaceSettings.from_environ(
        {"NEOPOLYP_MAX_VIDEO_SECONDS": "2.5", "NEOPOLYP_QUEUE_SIZE": "3", "NEOPOLYP_BACKEND": "onnx", "OTHER": "x"}
    )
    assert (settings.max_video_seconds, settings.queue_size, settings.backend) == (2.5, 3, "onnx")
    assert SpaceSettings.from_environ({}) == SpaceSettings()
    with pytest.raises(ConfigError, match="NEOPOLYP_PRECISION='int4'"):
        SpaceSettings.from_environ({"NEOPOLYP_PRECISION": "int4"})
    with pytest.raises(ConfigError, match="NEOPOLYP_EXAMPLES .* is not a folder"):
        SpaceSettings.from_environ({"NEOPOLYP_EXAMPLES": str(tmp_path / "missing")})


def test_int8_missing_from_a_trained_folder_says_how_to_make_it(random_model, tmp_path):
    random_model.save_pretrained(tmp_path / "m")
    with pytest.raises(ModelSourceError, match=r"has no model_int8.onnx; make it .*export_onnx.py .* --int8"):
        load_segmenter(str(tmp_path / "m"), backend="onnx", precision="int8")
