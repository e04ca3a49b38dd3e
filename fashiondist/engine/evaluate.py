"""Evaluation on every rank: each rank predicts its shard, the shards are gathered, every sample counts once.

Test-time policy (flip averaging) is `models.tta.tta_probs`, the same function the exported ONNX graph runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fashiondist.atomic_io import atomic_write
from fashiondist.config import Tta
from fashiondist.engine.batches import shard_for_eval
from fashiondist.metrics import accuracy
from fashiondist.models.tta import tta_probs
from fashiondist.run_layout import PREDICTIONS_FILE


@torch.no_grad()
def model_probs(
    model: torch.nn.Module,
    images: torch.Tensor,
    batch_size: int,
    tta: Tta = Tta.NONE,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """A torch model's class probabilities float32 [M, K] for uint8 images [M, 1, H, W] (on the model's
    device), under the test-time policy `tta`. (The onnxruntime side is `inference.predict.predict_proba`.)

    `autocast` makes a fresh mixed-precision context per batch (e.g. `accelerator.autocast`).
    """
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        with autocast():
            out.append(tta_probs(model, x, tta))
    model.train(was_training)
    return torch.cat(out)


@dataclass
class EvalResult:
    probs: np.ndarray  # float32 [M, K], in validation-set order
    labels: np.ndarray  # int64 [M]
    loss: float  # mean negative log-likelihood
    accuracy: float

    @property
    def count(self) -> int:
        return len(self.labels)


def evaluate(
    accelerator, model, images: torch.Tensor, labels: torch.Tensor, batch_size: int, tta: Tta
) -> EvalResult:
    """Every rank predicts its padded shard; gather and keep the first M rows, so the count is exact.

    We do not use a DataLoader (the data already lives on the device), so `gather_for_metrics` cannot know the
    padding; `shard_for_eval` pads the same way it would, and the trim below drops exactly the padding.
    """
    n = len(labels)
    index, _ = shard_for_eval(n, accelerator.process_index, accelerator.num_processes)
    index = index.to(images.device)
    probs = model_probs(model, images[index], batch_size, tta, accelerator.autocast)
    gathered_probs = accelerator.gather(probs)[:n].cpu()
    gathered_labels = accelerator.gather(labels[index])[:n].cpu()
    nll = -torch.log(gathered_probs.gather(1, gathered_labels[:, None]).clamp_min(1e-12)).mean()
    probs_np, labels_np = gathered_probs.numpy(), gathered_labels.numpy()
    return EvalResult(probs_np, labels_np, float(nll), accuracy(labels_np, probs_np.argmax(1)))


def save_predictions(run_dir: Path, labels: np.ndarray, probs: np.ndarray) -> None:
    """`run_dir/val_predictions.npz` (y_true int64 [M], probs float32 [M, K]), written atomically."""
    with atomic_write(run_dir / PREDICTIONS_FILE) as fh:
        np.savez_compressed(fh, y_true=labels.astype(np.int64), probs=probs.astype(np.float32))
