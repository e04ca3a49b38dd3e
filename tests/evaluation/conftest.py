"""Fixtures: real Fashion-MNIST labels, and one sweep of fake run directories reported once per session.

The labels are real: the bundled sample's (a stratified subset of Fashion-MNIST's training labels).
"""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_runs import informative_probs, probs_for_predictions, write_run
from rich.console import Console

from fashiondist.data.sources import load_data
from fashiondist.evaluation.sweep import report_sweep

VAL_SIZE = 2000  # images in the fake validation split: every class well represented, metrics fast


@pytest.fixture(scope="session")
def labels() -> np.ndarray:
    """VAL_SIZE real labels (int64) drawn by a seeded permutation, as a validation split would hold them."""
    real = load_data("sample").labels
    chosen = np.random.default_rng(0).permutation(real.size)[:VAL_SIZE]  # whatever order the source keeps
    return real[np.sort(chosen)].copy()


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory, labels: np.ndarray) -> dict[str, Any]:
    """One sweep reported once for the module's tests: three skills and a pair tied on accuracy.

    The tied pair makes the same number of mistakes; `tie-a` piles them on one class, `tie-b` spreads
    them over all classes, so `tie-b` has the higher macro F1. `tie-a` is given first and sorts first by
    name, so neither input order nor name order can pick the right one by luck.
    """
    parent = tmp_path_factory.mktemp("sweep")
    num_classes = int(labels.max()) + 1
    runs = [
        write_run(parent / name, labels, informative_probs(labels, num_classes, skill, seed), model=name)
        for seed, (name, skill) in enumerate([("cnn", 2.0), ("cnn-dropout", 2.6), ("resnet", 3.2)])
    ]
    concentrated, balanced = labels.copy(), labels.copy()
    errors = labels.size // 20  # 5% of the images; class 0 holds about 10% of them
    concentrated[np.flatnonzero(labels == 0)[:errors]] = 1
    spread = np.arange(0, labels.size, labels.size // errors)[:errors]
    balanced[spread] = (labels[spread] + 1) % num_classes
    runs.append(
        write_run(parent / "tie-a", labels, probs_for_predictions(concentrated, num_classes, 7), "convnet")
    )
    runs.append(
        write_run(parent / "tie-b", labels, probs_for_predictions(balanced, num_classes, 8), "resnet9")
    )
    stdout = StringIO()
    extra = {"export": {"onnx": "model.onnx", "parity_max_abs_diff": 1.2e-6}, "submission": {"rows": 10000}}
    results, best = report_sweep(parent, runs, Console(file=stdout, width=220), extra=extra)
    return {"parent": parent, "runs": runs, "results": results, "best": best, "stdout": stdout.getvalue()}


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str, y_true: np.ndarray, probs: np.ndarray, **kwargs: Any) -> Path:
        return write_run(tmp_path / name, y_true, probs, **kwargs)

    return make
