"""Log-odds and the logistic function, shared by the lesion classifier's fusion and the video tracker."""

from __future__ import annotations

import numpy as np

EPSILON = 1e-4  # probabilities are clipped to [EPSILON, 1 - EPSILON] before their log-odds


def logit(probability) -> np.ndarray:
    """Log-odds of clipped probabilities."""
    p = np.clip(np.asarray(probability, np.float64), EPSILON, 1 - EPSILON)
    return np.log(p / (1 - p))


def sigmoid(z) -> np.ndarray:
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))
