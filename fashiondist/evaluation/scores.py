"""Metrics of one variant from its saved validation predictions, and the reader of a run directory.

The engine saves the best weights' predictions on the validation split (`val_predictions.npz`), so every
metric here is computed from what the selected model really predicted, with scikit-learn, without torch
and without running a model again. `evaluate_run` is what `fashiondist evaluate RUN_DIR` and the sweep
report call; it writes `evaluation.json` next to the predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashiondist.atomic_io import to_jsonable, write_json
from fashiondist.errors import InputError
from fashiondist.run_layout import (
    EVALUATION_FILE,
    PREDICTIONS_FILE,
    load_predictions,
    read_metrics,
    read_summary,
)

PROB_SUM_TOLERANCE = (
    1e-3  # softmax rows in float32 sum to 1 within ~1e-6; anything further off is not probabilities
)


@dataclass
class VariantResult:
    """One trained variant as the leaderboard, the plots and the HTML report see it."""

    name: str  # the run directory's name: unique within a sweep
    run_dir: Path
    metrics: dict[str, Any]  # evaluate_predictions' output
    summary: dict[str, Any]  # summary.json as the engine wrote it (params, macs, train_seconds, ...)
    history: list[dict[str, Any]]  # metrics.jsonl, one dict per epoch, in epoch order

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    @property
    def macro_f1(self) -> float:
        return float(self.metrics["f1_macro"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "run_dir": str(self.run_dir),
            "metrics": self.metrics,
            "summary": self.summary,
            "history": self.history,
        }


def evaluate_predictions(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: list[str] | tuple[str, ...],
    source: str = "predictions",
) -> dict[str, Any]:
    """Accuracy, precision/recall/F1 (macro, weighted, per class), confusion matrix, ROC AUC and log loss.

    The predicted class is the argmax of `probs`. Every metric is taken over all K classes (labels=0..K-1),
    so a class missing from this validation split still has a row (support 0) and a column instead of
    silently shifting the others. Precision of a class never predicted counts as 0 (zero_division=0), as
    the engine's macro F1 does. `source` names the data in error messages (e.g. the .npz path).
    """
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, log_loss

    _check_predictions(y_true, probs, class_names, source)
    num_classes = len(class_names)
    labels = np.arange(num_classes)
    predictions = probs.argmax(axis=1)
    report = classification_report(
        y_true, predictions, labels=labels, target_names=list(class_names), output_dict=True, zero_division=0
    )
    metrics = {
        "num_samples": int(y_true.shape[0]),
        "num_classes": num_classes,
        "class_names": list(class_names),
        "accuracy": float(accuracy_score(y_true, predictions)),
        "precision_macro": report["macro avg"]["precision"],
        "recall_macro": report["macro avg"]["recall"],
        "f1_macro": report["macro avg"]["f1-score"],
        "precision_weighted": report["weighted avg"]["precision"],
        "recall_weighted": report["weighted avg"]["recall"],
        "f1_weighted": report["weighted avg"]["f1-score"],
        # sklearn clips probabilities to the dtype's eps, so an exact 0 on the true class stays finite.
        "log_loss": float(log_loss(y_true, probs, labels=labels)),
        "roc_auc": roc_auc(y_true, probs, class_names),
        "classification_report": report,
        "confusion_matrix": confusion_matrix(y_true, predictions, labels=labels),
    }
    return to_jsonable(metrics)


def roc_auc(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """One-vs-rest ROC AUC per class, micro (all class scores pooled) and macro (mean of the defined ones).

    A class that is absent from y_true (or is all of it) has no negatives or no positives, so its AUC is
    undefined: it becomes null with a note, and the macro average is taken over the other classes rather
    than failing the whole report or turning it into NaN.
    """
    from sklearn.metrics import roc_auc_score

    onehot = y_true[:, None] == np.arange(len(class_names))[None, :]  # [M, K] bool
    per_class: dict[str, float | None] = {}
    for k, name in enumerate(class_names):
        has_both = onehot[:, k].any() and not onehot[:, k].all()
        per_class[name] = float(roc_auc_score(onehot[:, k], probs[:, k])) if has_both else None
    undefined = [name for name, auc in per_class.items() if auc is None]
    defined = [auc for auc in per_class.values() if auc is not None]
    note = None
    if undefined:
        note = (
            f"AUC undefined for {', '.join(undefined)}: no positive or no negative validation samples; "
            f"the macro average is over the other {len(defined)} classes"
        )
    return {
        "per_class": per_class,
        "micro": float(roc_auc_score(onehot.ravel(), probs.ravel())),  # [M*K] pooled scores
        "macro": float(np.mean(defined)) if defined else None,
        "note": note,
    }


def _check_predictions(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str] | tuple[str, ...], source: str
) -> None:
    """Reject predictions that would make a metric silently wrong (shape, label range, non-probabilities)."""
    num_classes = len(class_names)
    if len(set(class_names)) != num_classes:
        raise InputError(f"{source}: class names must be unique (per-class results are keyed by name)")
    if y_true.ndim != 1 or not np.issubdtype(y_true.dtype, np.integer):
        raise InputError(f"{source}: y_true must be 1-D integers, got {y_true.dtype} {y_true.shape}")
    if probs.ndim != 2 or not np.issubdtype(probs.dtype, np.floating):
        raise InputError(f"{source}: probs must be 2-D floats, got {probs.dtype} {probs.shape}")
    if y_true.shape[0] == 0 or y_true.shape[0] != probs.shape[0]:
        raise InputError(f"{source}: {y_true.shape[0]} labels but {probs.shape[0]} rows of probabilities")
    if num_classes < 2 or probs.shape[1] != num_classes:
        raise InputError(f"{source}: probs has {probs.shape[1]} columns for {num_classes} class names")
    if y_true.min() < 0 or y_true.max() >= num_classes:
        raise InputError(
            f"{source}: labels must be in 0..{num_classes - 1}, got {y_true.min()}..{y_true.max()}"
        )
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise InputError(f"{source}: probs must be finite and in [0, 1]")
    worst = float(np.abs(probs.sum(axis=1, dtype=np.float64) - 1.0).max())
    if worst > PROB_SUM_TOLERANCE:
        raise InputError(
            f"{source}: probability rows must sum to 1 (off by up to {worst:.3g}); logits saved?"
        )


def evaluate_run(run_dir: str | Path) -> VariantResult:
    """Evaluate one run directory and write its `evaluation.json` (atomically)."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    history = read_metrics(run_dir)
    y_true, probs = load_predictions(run_dir)
    metrics = evaluate_predictions(
        y_true, probs, summary["class_names"], source=str(run_dir / PREDICTIONS_FILE)
    )
    result = VariantResult(run_dir.resolve().name, run_dir, metrics, summary, history)
    write_json(run_dir / EVALUATION_FILE, result.to_dict())
    return result
