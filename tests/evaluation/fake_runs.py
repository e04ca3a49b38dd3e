"""Run directories as the engine writes them (summary.json, metrics.jsonl, val_predictions.npz), with real labels and honest probabilities.

The probabilities come from a seeded generator that is noisy but informative, with the confusions a real
classifier makes between neighbouring classes. That is honest ground for testing metrics: the tests
recompute every number with scikit-learn from the saved .npz, not from this generator's intent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fashiondist.constants import class_names_for


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def informative_probs(y_true: np.ndarray, num_classes: int, skill: float, seed: int) -> np.ndarray:
    """Noisy logits with `skill` added on the true class and part of it on the next class (a confusion)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (y_true.size, num_classes))  # [M, K]
    rows = np.arange(y_true.size)
    logits[rows, y_true] += skill
    logits[rows, (y_true + 1) % num_classes] += 0.4 * skill
    return softmax(logits)


def probs_for_predictions(predictions: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """Probabilities whose argmax is exactly `predictions`, with random confidence."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (predictions.size, num_classes))  # [M, K]
    rows = np.arange(predictions.size)
    logits[rows, predictions] = logits.max(axis=1) + rng.uniform(0.5, 3.0, predictions.size)
    return softmax(logits)


def write_run(
    run_dir: Path,
    y_true: np.ndarray,
    probs: np.ndarray,
    model: str = "convnet",
    epochs: int = 6,
    class_names: tuple[str, ...] | None = None,
) -> Path:
    """A run directory with everything the evaluation stage reads, shaped as the engine writes one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    num_classes = probs.shape[1]
    final_acc = float(np.mean(probs.argmax(axis=1) == y_true))
    history = [_epoch_record(epoch, epochs, final_acc) for epoch in range(1, epochs + 1)]
    with (run_dir / "metrics.jsonl").open("w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in history)
    summary = {
        "model": model,
        "params": 240_901 + 1000 * len(model),
        "macs": 11_000_000 + 17 * len(model),
        "train_seconds": history[-1]["elapsed_seconds"],
        "images_per_s": 5400.0,
        "best_val_acc": final_acc,
        "best_epoch": epochs,
        "epochs": epochs,
        "num_classes": num_classes,
        "class_names": list(class_names or class_names_for(num_classes)),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    np.savez(run_dir / "val_predictions.npz", y_true=y_true.astype(np.int64), probs=probs.astype(np.float32))
    return run_dir


def _epoch_record(epoch: int, epochs: int, final_acc: float) -> dict[str, Any]:
    progress = epoch / epochs
    return {
        "epoch": epoch,
        "step": 211 * epoch,
        "train_loss": 1.2 - 0.9 * progress,
        "train_acc": min(1.0, final_acc * (0.8 + 0.22 * progress)),
        "val_loss": 1.1 - 0.8 * progress,
        "val_acc": final_acc * (0.85 + 0.15 * progress),
        "lr": 0.1 * (1 - progress),
        "images_per_s": 5400.0,
        "epoch_seconds": 2.5,
        "elapsed_seconds": 2.5 * epoch,
    }
