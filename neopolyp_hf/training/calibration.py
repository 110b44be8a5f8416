"""Calibrating the fused P(neoplastic | polyp): the temperature fitted on held-out calls, and the
expected calibration error that reports it."""

from __future__ import annotations

import numpy as np


def fit_temperature(logits, outcomes) -> float:
    """The temperature T minimizing the log-loss of sigmoid(z / T) (a 1-D search; 1.0 with too few calls).

    Dividing by T > 0 never moves a call across 0.5: it changes how sure the model says it is, not what it says.
    """
    z, y = np.asarray(logits, np.float64), np.asarray(outcomes, np.float64)
    if len(z) < 10 or y.min() == y.max():
        return 1.0
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 241))
    losses = [np.mean(np.logaddexp(0.0, -z / t) * y + np.logaddexp(0.0, z / t) * (1 - y)) for t in grid]
    return float(grid[int(np.argmin(losses))])


def expected_calibration_error(probabilities, outcomes, bins: int = 10) -> float:
    """Binned |confidence - accuracy| of a binary call, weighted by the share of calls in each bin."""
    p, y = np.asarray(probabilities, np.float64), np.asarray(outcomes, np.float64)
    if len(p) == 0:
        return float("nan")
    # The confidence of the call (neoplastic when p >= 0.5) against whether the call was right.
    confidence, right = np.maximum(p, 1 - p), (p >= 0.5) == (y == 1)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            error += chosen.mean() * abs(confidence[chosen].mean() - right[chosen].mean())
    return float(error)
