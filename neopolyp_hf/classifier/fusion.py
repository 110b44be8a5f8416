"""Fusing the segmenter's and the classifier's P(neoplastic | polyp) (its calibration is fitted in
`neopolyp_hf.training.calibration`)."""

from __future__ import annotations

import numpy as np

from ..logodds import logit


def fused_logit(segmenter_probability, classifier_probability, weight: float) -> np.ndarray:
    """The weighted mean of the two log-odds: weight 0 is the segmenter alone, 1 the classifier alone."""
    return (1.0 - weight) * logit(segmenter_probability) + weight * logit(classifier_probability)
