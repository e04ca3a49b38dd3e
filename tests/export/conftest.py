"""Fixtures: the bundled sample split like a run's, and a briefly trained `cnn` saved as a run directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from trained_models import SampleSplit, sample_split, train_briefly


@pytest.fixture(scope="session")
def split() -> SampleSplit:
    return sample_split()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, split: SampleSplit) -> Path:
    """runs/cnn-like directory: best/ (model.safetensors, model.json with metric.val_acc) and config.yaml."""
    run = tmp_path_factory.mktemp("run")
    train_briefly("cnn", split, run / "best")
    (run / "config.yaml").write_text("model: cnn\nval_fraction: 0.1\nseed: 0\n")
    return run
