"""Pure array metrics the engine needs to pick the best epoch (no sklearn, no torch)."""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(np.mean(labels == np.asarray(predictions)))


def cross_entropy(labels: np.ndarray, probs: np.ndarray, label_smoothing: float = 0.0) -> float:
    """Mean cross-entropy of probabilities `probs` [M, K] against integer `labels` [M], in float64, with the
    label smoothing PyTorch's `cross_entropy` applies: (1 - e) x (-log p_true) + e x mean over k of (-log p_k).

    So the validation loss is the training objective, the same quantity as the training loss. A probability that
    underflowed to 0 in float32 counts as float32's smallest normal number (-log of it is 87.3), not as infinity.
    """
    logp = np.log(np.maximum(np.asarray(probs, dtype=np.float64), np.finfo(np.float32).tiny))  # [M, K]
    nll = -logp[np.arange(len(labels)), np.asarray(labels)]  # [M]
    uniform = -logp.mean(axis=1)  # [M]
    return float(np.mean((1.0 - label_smoothing) * nll + label_smoothing * uniform))
