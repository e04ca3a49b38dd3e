"""Real images for the export checks: the validation split a run held out (parity, the int8 accuracy gate)
and training images (int8 calibration), loaded through the data layer with the run's own config."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashiondist.config import TrainConfig, load_saved_config
from fashiondist.data.folds import run_split
from fashiondist.data.sources import available_splits, load_data
from fashiondist.run_layout import CONFIG_FILE


@dataclass(frozen=True)
class CheckImages:
    """Validation images (parity, accuracy) and training images (int8 calibration) of one data source."""

    images: np.ndarray  # uint8 [M, 28, 28]
    labels: np.ndarray | None  # int64 [M], or None for an unlabelled source
    calibration_images: np.ndarray | None  # uint8 [C, 28, 28] from the training part
    description: str


def load_check_images(spec: str, checkpoint: str | os.PathLike, calibration_count: int = 4096) -> CheckImages:
    """The validation split of data source `spec`, as the checkpoint's run made it (val_fraction, seed from its
    config.yaml when there is one), plus up to `calibration_count` training images for int8 calibration
    (MinMax ranges: more images cover the tails better; 4096 kept cnn-dropout within 0.3 points where 1024
    lost 0.8).

    An unlabelled source (a testX.csv) gives its images for the parity check only.
    """
    data = load_data(spec, split="train" if "train" in available_splits(spec) else "test")
    if data.labels is None:
        return CheckImages(data.images, None, None, f"{len(data.images)} unlabelled images of {data.source}")
    cfg = run_config(Path(checkpoint))
    train_idx, val_idx = run_split(data.labels, cfg)
    return CheckImages(
        data.images[val_idx],
        data.labels[val_idx],
        data.images[train_idx[:calibration_count]],
        f"{len(val_idx)} validation images of {data.source} "
        f"(val_fraction {cfg.val_fraction}, split seed {cfg.data_seed()})",
    )


def run_config(checkpoint: Path) -> TrainConfig:
    """The config.yaml of the run beside or above `checkpoint`; TrainConfig's defaults when there is none."""
    start = checkpoint if checkpoint.is_dir() else checkpoint.parent
    for directory in (start, start.parent):
        if (directory / CONFIG_FILE).is_file():
            return load_saved_config(directory / CONFIG_FILE)
    return TrainConfig()
