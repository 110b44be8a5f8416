"""Connected polyp regions: lesion-level class consistency and the per-lesion table."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .classes import NEOPLASTIC, NON_NEOPLASTIC
from .logodds import logit, sigmoid
from .masks import UNCERTAIN_OUTLINE, polyp_box


@dataclass(frozen=True)
class Lesion:
    """One connected polyp region of a predicted mask."""

    label: int  # its number in `label_lesions(mask)` of the mask it came from
    area_px: int
    area_percent: float
    class_index: int
    class_name: str
    confidence: float  # mean over its pixels of the probability of each pixel's class
    bbox: tuple[int, int, int, int]  # x, y, width, height
    neoplastic_probability: float  # mean over its pixels of P(neoplastic) / (P(neoplastic) + P(non-neoplastic))
    uncertain: bool  # neoplastic_probability inside the config's uncertain_range
    # With a second stage, neoplastic_probability is the fused, calibrated value; these are its inputs.
    segmenter_probability: float | None = None
    classifier_probability: float | None = None
    # In a video, the track the lesion belongs to (its class and probability are then the track's).
    track_id: int | None = None


def _label_regions(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """OpenCV's 8-connected labelling of the non-background pixels: (count incl. background, labels, stats).

    Its numbering depends on where the array starts (it visits 2 x 2 blocks), so a box and the whole
    frame can number the same regions differently: only `label_lesions` may hand labels out.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    return count, labels, stats


def label_lesions(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """The one lesion numbering: label k of the result is the lesion whose `Lesion.label` is k.

    Args:
        mask: H x W class indices (any integer type; 0 is background).

    Returns:
        (count, labels, stats): the number of labels including background (0); an H x W int32 image of
        labels; and a (count, 5) int32 table of x, y, width, height, area in frame pixels for each label
        (row 0, the background, is not meaningful). Regions are 8-connected polyp pixels of any class.
    """
    labels = np.zeros(mask.shape, np.int32)
    box = polyp_box(mask)
    if box is None:
        return 1, labels, np.zeros((1, 5), np.int32)
    # Labelling touches only the box around the polyps, often a small part of the frame; the numbering is
    # the box's, and every caller gets it from here.
    count, inside, stats = _label_regions(mask[box])
    labels[box] = inside
    stats = stats.astype(np.int32)
    stats[:, 0] += box[1].start
    stats[:, 1] += box[0].start
    return count, labels, stats


def region_votes(labels: np.ndarray, mask: np.ndarray, count: int, classes: int) -> np.ndarray:
    """Pixels per (region, class) of `mask` in one integer bincount: a (count, classes) table."""
    flat = labels.astype(np.int64) * classes + mask.astype(np.int64)
    return np.bincount(flat.ravel(), minlength=count * classes).reshape(count, classes)


def harmonize_lesions(mask: np.ndarray) -> np.ndarray:
    """Give each connected polyp region its majority polyp class (by pixel count).

    A polyp is neoplastic or not as a whole, so a region split between the two classes is
    almost always wrong in part.
    """
    box = polyp_box(mask)
    if box is None or np.count_nonzero(mask == NEOPLASTIC) in (0, np.count_nonzero(mask[box])):
        return mask  # no polyp, or a single polyp class: nothing to harmonize
    # Labelling and voting touch only the box around the polyps, often a small part of the frame.
    inside = mask[box]
    count, labels, _ = _label_regions(inside)  # used only here, so any numbering will do
    votes = region_votes(labels, inside, count, int(inside.max()) + 1)
    votes[:, 0] = -1  # regions are polyp pixels only
    region_class = votes.argmax(axis=1).astype(mask.dtype)
    region_class[0] = 0
    harmonized = mask.copy()
    harmonized[box] = region_class[labels]
    return harmonized


def recolor_lesions(mask: np.ndarray, classes: dict[int, int]) -> np.ndarray:
    """The mask with every pixel of lesion `label` (numbered by `label_lesions`) in class `classes[label]`."""
    if not classes:
        return mask
    count, labels, _ = label_lesions(mask)
    region_class = np.zeros(count, mask.dtype)
    for label in range(1, count):
        region_class[label] = classes.get(label, 0)
    new_class = region_class[labels]
    return np.where(new_class == 0, mask, new_class)  # regions without a new class keep their pixels


def upsampled_box(maps: np.ndarray, height: int, width: int, box: tuple[slice, slice]) -> np.ndarray:
    """`box` of the C x h x w maps bilinearly resized to height x width, without resizing the rest.

    The same sampling as a full `cv2.resize` (pixel centres aligned), then cropped, to within
    OpenCV's 1/32-pixel interpolation grid.
    """
    rows, cols = box
    scale_y, scale_x = maps.shape[1] / height, maps.shape[2] / width
    to_source = np.array(
        [[scale_x, 0.0, (cols.start + 0.5) * scale_x - 0.5], [0.0, scale_y, (rows.start + 0.5) * scale_y - 0.5]]
    )
    size = (cols.stop - cols.start, rows.stop - rows.start)
    return np.stack(
        [
            cv2.warpAffine(
                plane, to_source, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
            )
            for plane in np.ascontiguousarray(maps, dtype=np.float32)
        ]
    )


def find_lesions(
    mask: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    uncertain_range: tuple[float, float] = (0.35, 0.65),
    min_area: int = 0,
    temperature: float = 1.0,
) -> list[Lesion]:
    """One `Lesion` per connected polyp region of `mask` of at least `min_area` pixels, largest first
    (smaller regions are left out of the list; their pixels stay in the mask).

    A lesion's P(neoplastic | polyp) is the mean over its pixels of P(neoplastic) / P(polyp), divided in
    log-odds by `temperature` (the model's `lesion_temperature`, fitted on held-out lesions: the raw mean
    is over-confident); the raw mean is then kept as `segmenter_probability`. The temperature never
    changes a call, only its confidence; `uncertain_range` applies to the calibrated value.

    `probabilities` is C x H x W at the mask's size, or at the model's size: then each lesion's
    box alone is upsampled (bilinearly), which is far cheaper than upsampling the whole frame.
    """
    count, labels, stats = label_lesions(mask)
    total = float(mask.size)
    low, high = uncertain_range
    lesions = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_area:
            continue
        box = (slice(y, y + h), slice(x, x + w))
        region = labels[box] == label  # each region is read inside its own box only
        classes_in_region = mask[box][region]
        classes = np.bincount(classes_in_region, minlength=len(class_names))
        classes[0] = 0
        majority = int(classes.argmax())
        in_box = (
            probabilities[:, box[0], box[1]]
            if probabilities.shape[1:] == mask.shape
            else upsampled_box(probabilities, *mask.shape, box)
        )
        pixels = in_box[:, region]  # C x n
        own_class = np.take_along_axis(pixels, classes_in_region[None].astype(np.intp), axis=0)[0]
        neoplastic, non_neoplastic = pixels[NEOPLASTIC], pixels[NON_NEOPLASTIC]
        share = float(np.mean(neoplastic / np.maximum(neoplastic + non_neoplastic, 1e-12)))
        calibrated = share if temperature == 1.0 else float(sigmoid(logit(share) / temperature))
        lesions.append(
            Lesion(
                label=label,
                area_px=area,
                area_percent=100.0 * area / total,
                class_index=majority,
                class_name=class_names[majority],
                confidence=float(own_class.mean()),
                bbox=(x, y, w, h),
                neoplastic_probability=calibrated,
                uncertain=bool(low <= calibrated <= high),
                segmenter_probability=None if temperature == 1.0 else share,
            )
        )
    return sorted(lesions, key=lambda lesion: -lesion.area_px)


def outline_uncertain(image: np.ndarray, mask: np.ndarray, lesions: list[Lesion]) -> np.ndarray:
    """Outline in yellow, in place, the lesions flagged uncertain: their colour is a guess the page and the
    video should not present as a call. `image` is the H x W x 3 uint8 overlay of `mask`; returns it."""
    chosen = [lesion.label for lesion in lesions if lesion.uncertain]
    if not chosen:
        return image
    labels = label_lesions(mask)[1]
    region = np.isin(labels, chosen).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, UNCERTAIN_OUTLINE, max(2, round(image.shape[1] / 320)))
    return image
