"""The second stage applied to a predicted mask: crop each lesion, classify, fuse, recolour."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ..classes import NEOPLASTIC, NON_NEOPLASTIC
from ..lesions import Lesion, recolor_lesions
from ..logodds import sigmoid
from .crops import lesion_crops, normalize_crops
from .fusion import fused_logit

# (N, 3, S, S) float32 normalized crops -> (N,) float32 logits of P(neoplastic | polyp).
ClassifyFn = Callable[[np.ndarray], np.ndarray]


def classifier_probabilities(
    classify: ClassifyFn, image: np.ndarray, bboxes: list, settings: dict[str, Any], config: dict, tta: bool = False
) -> np.ndarray:
    """P(neoplastic | polyp) from the classifier for each lesion box of `image`; with `tta`, the mean
    over the crop and its two flips (as the segmenter's TTA)."""
    if not bboxes:
        return np.zeros(0)
    crops = normalize_crops(
        lesion_crops(image, bboxes, settings["crop_size"], settings["margin"]), config["mean"], config["std"]
    )
    if not tta:
        return sigmoid(classify(crops))
    n = len(crops)
    flipped = np.concatenate([crops, crops[..., ::-1], crops[..., ::-1, :]], axis=0)
    probabilities = sigmoid(classify(np.ascontiguousarray(flipped)))
    return (probabilities[:n] + probabilities[n : 2 * n] + probabilities[2 * n :]) / 3.0


def fuse_lesions(
    lesions: list[Lesion],
    classifier: np.ndarray,
    settings: dict[str, Any],
    class_names: list[str],
    uncertain_range: tuple[float, float],
) -> list[Lesion]:
    """Each lesion with its fused, calibrated P(neoplastic | polyp), the class that follows and its flag."""
    low, high = uncertain_range
    fused = []
    for lesion, p_classifier in zip(lesions, classifier, strict=True):
        z = fused_logit(lesion.neoplastic_probability, p_classifier, settings["fusion_weight"])
        probability = float(sigmoid(z / settings["temperature"]))
        class_index = NEOPLASTIC if probability >= 0.5 else NON_NEOPLASTIC
        fused.append(
            replace(
                lesion,
                class_index=class_index,
                class_name=class_names[class_index],
                neoplastic_probability=probability,
                uncertain=bool(low <= probability <= high),
                segmenter_probability=lesion.neoplastic_probability,
                classifier_probability=float(p_classifier),
            )
        )
    return fused


def apply_second_stage(
    classify: ClassifyFn,
    image: np.ndarray,
    mask: np.ndarray,
    lesions: list[Lesion],
    config: dict[str, Any],
    tta: bool = False,
) -> tuple[np.ndarray, list[Lesion]]:
    """The mask with every pixel of each lesion in its fused class, and the fused lesions."""
    if not lesions:
        return mask, lesions
    settings = config["lesion_classifier"]
    p_classifier = classifier_probabilities(classify, image, [lesion.bbox for lesion in lesions], settings, config, tta)
    fused = fuse_lesions(lesions, p_classifier, settings, list(config["class_names"]), tuple(config["uncertain_range"]))
    return recolor_lesions(mask, {lesion.label: lesion.class_index for lesion in fused}), fused


__all__ = ["ClassifyFn", "apply_second_stage", "classifier_probabilities", "fuse_lesions"]
