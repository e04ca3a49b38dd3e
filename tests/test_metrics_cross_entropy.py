"""`metrics.cross_entropy`: the validation loss computed as PyTorch computes the training loss (label smoothing
included), so the two loss curves of a run measure the same thing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fashiondist.metrics import cross_entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_matches_torch_cross_entropy_with_label_smoothing(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)) * 3  # float64
    labels = rng.integers(0, 10, size=200)
    expected = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), label_smoothing=smoothing)
    probs = torch.softmax(
        torch.from_numpy(logits), 1
    ).numpy()  # float64 probabilities: log(softmax) = log_softmax
    # float64 throughout: each side's mean of 200 terms of size <= ~20 is within 200 x 2^-53 x 20 of exact
    assert cross_entropy(labels, probs, smoothing) == pytest.approx(
        float(expected), abs=2 * 200 * 20 * 2.0**-53
    )


def test_a_probability_that_underflowed_is_finite():
    probs = np.array([[1.0, 0.0]], dtype=np.float32)  # float32 softmax of logits 100 apart
    floor = float(np.finfo(np.float32).tiny)  # a float32 value, exact in float64
    assert cross_entropy(np.array([1]), probs) == -np.log(floor)  # the same one float64 log: exact
