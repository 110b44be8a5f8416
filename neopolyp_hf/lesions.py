"""Connected polyp regions: lesion-level class consistency and the per-lesion table."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .classes import NEOPLASTIC, NON_NEOPLASTIC
from .masks import polyp_box


@dataclass(frozen=True)
class Lesion:
    """One connected polyp region of a predicted mask."""

    label: int
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


def label_polyps(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Label the 8-connected non-background regions: (count incl. background, labels, stats)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
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
    count, labels, _ = label_polyps(inside)
    votes = region_votes(labels, inside, count, int(inside.max()) + 1)
    votes[:, 0] = -1  # regions are polyp pixels only
    region_class = votes.argmax(axis=1).astype(mask.dtype)
    region_class[0] = 0
    harmonized = mask.copy()
    harmonized[box] = region_class[labels]
    return harmonized


def recolor_lesions(mask: np.ndarray, classes: dict[int, int]) -> np.ndarray:
    """The mask with every pixel of lesion `label` (as `find_lesions` numbers them) in class `classes[label]`."""
    box = polyp_box(mask)
    if box is None or not classes:
        return mask
    inside = mask[box]
    count, labels, _ = label_polyps(inside)  # the same box and labelling as find_lesions
    region_class = np.zeros(count, mask.dtype)
    for label in range(1, count):
        region_class[label] = classes.get(label, 0)
    keep = region_class[labels] == 0  # regions without a new class keep their pixels
    recolored = mask.copy()
    recolored[box] = np.where(keep, inside, region_class[labels])
    return recolored


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
) -> list[Lesion]:
    """One `Lesion` per connected polyp region of `mask` of at least `min_area` pixels, largest first
    (smaller regions are left out of the list; their pixels stay in the mask).

    `probabilities` is C x H x W at the mask's size, or at the model's size: then each lesion's
    box alone is upsampled (bilinearly), which is far cheaper than upsampling the whole frame.
    """
    polyps = polyp_box(mask)
    if polyps is None:
        return []
    # Labelling touches only the box around the polyps, often a small part of the frame.
    top, left = polyps[0].start, polyps[1].start
    inside = mask[polyps]
    count, labels, stats = label_polyps(inside)
    total = float(mask.size)
    low, high = uncertain_range
    lesions = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_area:
            continue
        region = labels[y : y + h, x : x + w] == label  # each region is read inside its own box only
        classes_in_region = inside[y : y + h, x : x + w][region]
        classes = np.bincount(classes_in_region, minlength=len(class_names))
        classes[0] = 0
        majority = int(classes.argmax())
        x, y = x + left, y + top  # frame coordinates from here on
        box = (slice(y, y + h), slice(x, x + w))
        in_box = (
            probabilities[:, box[0], box[1]]
            if probabilities.shape[1:] == mask.shape
            else upsampled_box(probabilities, *mask.shape, box)
        )
        pixels = in_box[:, region]  # C x n
        own_class = np.take_along_axis(pixels, classes_in_region[None].astype(np.intp), axis=0)[0]
        neoplastic, non_neoplastic = pixels[NEOPLASTIC], pixels[NON_NEOPLASTIC]
        share = float(np.mean(neoplastic / np.maximum(neoplastic + non_neoplastic, 1e-12)))
        lesions.append(
            Lesion(
                label=label,
                area_px=area,
                area_percent=100.0 * area / total,
                class_index=majority,
                class_name=class_names[majority],
                confidence=float(own_class.mean()),
                bbox=(x, y, w, h),
                neoplastic_probability=share,
                uncertain=bool(low <= share <= high),
            )
        )
    return sorted(lesions, key=lambda lesion: -lesion.area_px)
