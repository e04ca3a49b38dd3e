"""The private test split's score: the images `--private-test N` kept out of every run, scored once at the end.

    score = score_private_test(run_dir, cfg, data)     # after a run (or a folds run: its folds' ensemble)

The split is `data.folds.private_split` (a fixed seed, stratified): no training, validation, early stopping,
model selection or recipe choice ever looks at it, so its accuracy is an estimate no choice was tuned on.
It is written to RUN/private_test.json (accuracy, binomial standard error, images, what was scored) and
never read back by any choice the package makes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fashiondist.atomic_io import write_json
from fashiondist.config import TrainConfig
from fashiondist.data.folds import private_split
from fashiondist.engine.distill import expand_members, load_ensemble
from fashiondist.engine.evaluate import model_probs
from fashiondist.metrics import accuracy
from fashiondist.run_layout import PRIVATE_TEST_FILE


def score_private_test(
    run_dir: Path, cfg: TrainConfig, images: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Score the run's best weights (a folds run: the mean of its folds) on the private split; write the file."""
    members = expand_members(str(run_dir))
    index = private_split(labels, cfg.private_test)[1]
    model = load_ensemble(members)  # one member: the same probabilities as the model alone
    pixels = torch.as_tensor(images[index]).unsqueeze(1)  # [M, 1, H, W] uint8
    probs = model_probs(model, pixels, cfg.eval_batch_size).numpy()
    acc = accuracy(labels[index], probs.argmax(1))
    record = {
        "images": len(index),
        "accuracy": acc,
        "standard_error": math.sqrt(acc * (1 - acc) / len(index)),  # binomial
        "scored": [str(m) for m in members],
        "how": "float32, each model with its run's tta"
        + (", mean of the folds' probabilities" if len(members) > 1 else ""),
    }
    write_json(run_dir / PRIVATE_TEST_FILE, record)
    return record
