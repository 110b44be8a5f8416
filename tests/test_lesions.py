"""Connected polyp regions: class consistency and the lesion table."""

import cv2
import numpy as np
import pytest

from neopolyp_hf import harmonize_lesions
from neopolyp_hf.inference import scores_to_mask, softmax
from neopolyp_hf.lesions import find_lesions


def test_harmonize_gives_each_region_one_class():
    mask = np.zeros((6, 10), np.uint8)
    mask[1:5, 1:5] = 1
    mask[1:3, 1:3] = 2  # a minority of region one says non-neoplastic
    mask[1:5, 7:9] = 2  # a separate, all non-neoplastic region
    out = harmonize_lesions(mask)
    assert (out[1:5, 1:5] == 1).all() and (out[1:5, 7:9] == 2).all() and (out[mask == 0] == 0).all()


def test_lesion_table_is_largest_first_with_majority_class_and_neoplastic_probability():
    mask = np.zeros((20, 20), np.uint8)
    mask[0:4, 0:4] = 2  # 16 px, non-neoplastic
    mask[10:18, 10:18] = 1  # 64 px, neoplastic, with a non-neoplastic corner
    mask[10:12, 10:12] = 2
    probabilities = np.zeros((3, 20, 20), np.float32)
    probabilities[0] = 1.0
    probabilities[:, 10:18, 10:18] = np.array([0.1, 0.81, 0.09])[:, None, None]  # P(neo | polyp) = 0.9
    probabilities[:, 0:4, 0:4] = np.array([0.2, 0.4, 0.4])[:, None, None]  # an even split: uncertain
    lesions = find_lesions(mask, probabilities, ["background", "neoplastic", "non_neoplastic"], (0.35, 0.65))
    assert [(lesion.area_px, lesion.class_name) for lesion in lesions] == [(64, "neoplastic"), (16, "non_neoplastic")]
    big, small = lesions
    assert big.bbox == (10, 10, 8, 8) and abs(big.confidence - (60 * 0.81 + 4 * 0.09) / 64) < 1e-6
    assert abs(big.neoplastic_probability - 0.9) < 1e-6 and not big.uncertain
    assert abs(small.neoplastic_probability - 0.5) < 1e-6 and small.uncertain
    assert abs(small.area_percent - 100 * 16 / 400) < 1e-9


def _harmonize_whole_frame(mask: np.ndarray) -> np.ndarray:
    """The plain definition: label the whole frame, majority polyp class per region."""
    count, labels = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
    out = np.zeros_like(mask)
    for label in range(1, count):
        region = labels == label
        out[region] = 1 if np.count_nonzero(mask[region] == 1) >= np.count_nonzero(mask[region] == 2) else 2
    return out


@pytest.mark.parametrize("seed", range(6))
def test_harmonize_on_the_polyp_box_matches_the_whole_frame_definition(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((90, 120), np.uint8)
    for _ in range(rng.integers(1, 5)):  # overlapping discs of either class, anywhere
        centre = (int(rng.integers(0, 120)), int(rng.integers(0, 90)))
        cv2.circle(mask, centre, int(rng.integers(2, 25)), int(rng.integers(1, 3)), -1)
    np.testing.assert_array_equal(harmonize_lesions(mask), _harmonize_whole_frame(mask))


def test_harmonize_leaves_empty_and_one_class_masks_as_they_are():
    empty = np.zeros((8, 8), np.uint8)
    one_class = empty.copy()
    one_class[2:4, 2:4] = 2
    one_class[6:8, 6:8] = 2
    np.testing.assert_array_equal(harmonize_lesions(empty), empty)
    np.testing.assert_array_equal(harmonize_lesions(one_class), one_class)


def test_lesions_from_model_resolution_probabilities_match_the_full_size_ones():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(3, 16, 16)).astype(np.float32)
    scores[1:, 4:12, 3:9] += 3.0  # one polyp region, classes mixed inside it
    low = softmax(scores, axis=0)
    height, width = 75, 101  # a ratio that is not a whole number
    full = np.stack([cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR) for plane in low])
    mask = scores_to_mask(scores, height, width)
    names = ["background", "neoplastic", "non_neoplastic"]
    from_full, from_low = find_lesions(mask, full, names), find_lesions(mask, low, names)
    assert from_full and [(a.area_px, a.class_name) for a in from_full] == [(b.area_px, b.class_name) for b in from_low]
    for a, b in zip(from_full, from_low, strict=True):
        assert abs(a.confidence - b.confidence) < 5e-3
        assert abs(a.neoplastic_probability - b.neoplastic_probability) < 5e-3


@pytest.mark.parametrize("seed", range(4))
def test_lesions_on_the_polyp_box_match_the_whole_frame_definition(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((90, 120), np.uint8)
    for _ in range(rng.integers(1, 6)):  # discs of either class, anywhere, some touching
        centre = (int(rng.integers(0, 120)), int(rng.integers(0, 90)))
        cv2.circle(mask, centre, int(rng.integers(2, 20)), int(rng.integers(1, 3)), -1)
    probabilities = softmax(rng.normal(size=(3, 90, 120)).astype(np.float32), axis=0)
    count, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    expected = []
    for label in range(1, count):
        region = labels == label
        majority = 1 if np.count_nonzero(mask[region] == 1) >= np.count_nonzero(mask[region] == 2) else 2
        own = np.take_along_axis(probabilities, mask[None].astype(np.intp), axis=0)[0][region]
        share = probabilities[1][region] / (probabilities[1][region] + probabilities[2][region])
        expected.append(
            (int(region.sum()), majority, tuple(int(v) for v in stats[label, :4]), own.mean(), share.mean())
        )
    found = find_lesions(mask, probabilities, ["background", "neoplastic", "non_neoplastic"])
    assert len(found) == len(expected) > 0
    for lesion, (area, majority, bbox, confidence, share) in zip(
        found, sorted(expected, key=lambda e: -e[0]), strict=True
    ):
        assert (lesion.area_px, lesion.class_index, lesion.bbox) == (area, majority, bbox)
        assert lesion.confidence == pytest.approx(confidence, abs=1e-6)
        assert lesion.neoplastic_probability == pytest.approx(share, abs=1e-6)
    assert find_lesions(np.zeros((5, 5), np.uint8), probabilities[:, :5, :5], ["b", "n", "m"]) == []


def test_regions_under_the_minimum_area_are_not_listed_but_keep_their_pixels():
    mask = np.zeros((40, 40), np.uint8)
    mask[0:3, 0:3] = 1  # 9 px: a speck
    mask[20:32, 20:32] = 2  # 144 px
    probabilities = np.full((3, 40, 40), 1 / 3, np.float32)
    names = ["background", "neoplastic", "non_neoplastic"]
    assert [lesion.area_px for lesion in find_lesions(mask, probabilities, names, min_area=10)] == [144]
    assert [lesion.area_px for lesion in find_lesions(mask, probabilities, names, min_area=9)] == [144, 9]
    assert [lesion.area_px for lesion in find_lesions(mask, probabilities, names, min_area=145)] == []


def test_the_default_minimum_lesion_area_is_in_the_config_and_in_predictions(random_model):
    from neopolyp_hf import ConfigError, ModelConfig
    from neopolyp_hf.classes import DEFAULT_MIN_LESION_AREA

    assert ModelConfig().min_lesion_area == DEFAULT_MIN_LESION_AREA == 100
    assert ModelConfig.from_dict(
        {k: v for k, v in ModelConfig().to_dict().items() if k != "min_lesion_area"}, saved=True
    )
    for bad in (-1, 2.5, True, "100"):
        with pytest.raises(ConfigError, match="min_lesion_area"):
            ModelConfig(min_lesion_area=bad)
    image = np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    prediction = random_model.predict(image)
    assert prediction.min_lesion_area == random_model.config["min_lesion_area"]
    assert all(lesion.area_px >= prediction.min_lesion_area for lesion in prediction.lesions)


# One lesion numbering: every consumer of `Lesion.label` must find the lesion's own pixels, wherever it sits.
NAMES = ["background", "neoplastic", "non_neoplastic"]


def _reference_regions(mask: np.ndarray) -> list[np.ndarray]:
    """The slow reference: each 8-connected polyp region as a boolean mask (scipy, no OpenCV numbering)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3)))
    return [labels == k for k in range(1, count + 1)]


def _region_of(lesion, regions: list[np.ndarray]) -> np.ndarray:
    """The reference region with the lesion's box and area (the tests give every region its own area)."""
    x, y, w, h = lesion.bbox
    for region in regions:
        rows, cols = np.nonzero(region)
        if (cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1, region.sum()) == (x, y, w, h, lesion.area_px):
            return region
    raise AssertionError(f"no reference region for {lesion}")


def _odd_offset_masks():
    """The 4 x 4 case of two one-pixel lesions, then small frames of scattered pixels: many lesions touching
    diagonally across 2 x 2 blocks, at odd offsets and on the frame's edges (where a box's numbering and the
    whole frame's differ). Each lesion takes one random class; the truth swaps some lesions' classes."""
    small = np.zeros((4, 4), np.uint8)
    small[1, 3], small[3, 1] = 1, 2
    yield small, small.copy()
    rng = np.random.default_rng(7)
    while True:
        height, width = (int(v) for v in rng.integers(4, 14, size=2))
        scattered = rng.random((height, width)) < 0.15
        regions = _reference_regions(scattered.astype(np.uint8))
        keys = [(tuple(np.argwhere(r).min(axis=0)), tuple(np.argwhere(r).max(axis=0)), r.sum()) for r in regions]
        if len(regions) < 2 or len(set(keys)) < len(keys):  # every lesion told apart by its box and area
            continue
        mask, truth = np.zeros((height, width), np.uint8), np.zeros((height, width), np.uint8)
        for region in regions:
            mask[region] = rng.integers(1, 3)
            truth[region] = mask[region][0] if rng.random() < 0.5 else 3 - mask[region][0]
        yield mask, truth


CASES = [case for case, _ in zip(_odd_offset_masks(), range(60), strict=False)]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_lesion_level_consumer_finds_each_lesions_own_pixels(case):
    from neopolyp_hf.lesions import label_lesions, recolor_lesions
    from neopolyp_hf.training.metrics import LesionCallAccumulator, LesionClassAccumulator
    from neopolyp_hf.video.tracking import lesion_footprints

    mask, truth = CASES[case]
    probabilities = np.stack([(mask == c).astype(np.float32) for c in range(3)])
    lesions = find_lesions(mask, probabilities, NAMES)
    regions = _reference_regions(mask)
    assert len(lesions) == len(regions)
    _, labels, _ = label_lesions(mask)
    calls, classes = LesionCallAccumulator(), LesionClassAccumulator()
    calls.update(lesions, mask, truth)
    classes.update(lesions, mask, truth)
    true_classes = []
    for lesion, record in zip(lesions, classes.records, strict=True):
        region = _region_of(lesion, regions)
        np.testing.assert_array_equal(labels == lesion.label, region)
        np.testing.assert_array_equal(
            lesion_footprints(mask, [lesion])[0], region
        )  # frames under OVERLAP_WIDTH: full size
        true_class = int(np.bincount(truth[region], minlength=3)[1:].argmax()) + 1
        true_classes.append(true_class)
        assert record["neoplastic"] == float(true_class == 1)
        recolored = recolor_lesions(mask, {lesion.label: 3 - lesion.class_index})
        np.testing.assert_array_equal(recolored != mask, region)
    right = sum(lesion.class_index == t for lesion, t in zip(lesions, true_classes, strict=True))
    assert calls.compute()["lesion_call_accuracy"] == right / len(lesions)
