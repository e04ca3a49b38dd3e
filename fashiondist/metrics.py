"""Pure array metrics the engine needs to pick the best epoch (no sklearn, no torch)."""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(np.mean(labels == np.asarray(predictions)))


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1; a class with no true and no predicted samples counts as 0."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    scores = []
    for k in range(num_classes):
        tp = np.sum((predictions == k) & (labels == k))
        fp = np.sum((predictions == k) & (labels != k))
        fn = np.sum((predictions != k) & (labels == k))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))
