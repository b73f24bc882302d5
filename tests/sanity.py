"""Sanity thresholds for accuracy: above what a constant predictor scores on the same labels."""

from __future__ import annotations

import numpy as np

# How far above the majority-class rate a trained model must score to count as having learned something.
MARGIN = 0.05


def majority_rate(binary_labels) -> float:
    """Acc-2 of always predicting the more frequent class of these {0, 1} labels."""
    positive = float(np.mean(np.asarray(binary_labels, dtype=np.float64) == 1.0))
    return max(positive, 1.0 - positive)


def above_chance(labels) -> float:
    """The Acc-2 a model must beat on ``labels``: the majority-class rate plus MARGIN."""
    return majority_rate(labels) + MARGIN
