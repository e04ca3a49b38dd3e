"""K-fold cross-validation: one run per fold under RUN/fold-i, and out-of-fold predictions for RUN itself.

    fashiondist train --model convnet --folds 5 --out runs/cv5      # RUN/fold-0 ... fold-4, then RUN's OOF files

Each fold is an ordinary run (its own config.yaml with `fold: i`, checkpoints, resume, DDP), validated on
the i-th of K stratified folds (`data.folds.run_split`). A fold whose summary.json is written is finished
and skipped on a rerun; the others continue from their `last/` (resume auto), so a killed K-fold job resumes
fold by fold with the same command. When every fold is finished, the main process writes into RUN:

- `val_predictions.npz`: every fold's best-weight predictions of its own validation fold, in image order:
  the out-of-fold (OOF) predictions, which score every training image (all but the private test split)
  exactly once, each by the one model that never trained on it;
- `summary.json`: the folds' totals (training seconds summed) and `cv`: the OOF accuracy over all those
  images with its binomial standard error sqrt(p (1 - p) / n), and each fold's accuracy;
- `metrics.jsonl`: the folds' per-epoch metrics averaged over the folds (for the report's curves).

So `fashiondist evaluate RUN`, the leaderboard and the report read a folds run like any run, and its
confusion matrix and per-class table are the OOF ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fashiondist.atomic_io import write_json, write_text
from fashiondist.config import TrainConfig
from fashiondist.data.folds import run_split
from fashiondist.engine.evaluate import save_predictions
from fashiondist.errors import InputError
from fashiondist.run_layout import (
    FOLD_PREFIX,
    METRICS_FILE,
    SUMMARY_FILE,
    load_predictions,
    read_metrics,
    read_summary,
)


def fold_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """One config per fold, each into RUN/fold-i, resuming its own last/ when there is one."""
    parent = cfg.run_dir()
    return [
        dataclasses.replace(cfg, fold=i, out=str(parent / f"{FOLD_PREFIX}{i}"), resume="auto")
        for i in range(cfg.folds)
    ]


def finished(cfg: TrainConfig) -> bool:
    """A fold is done when its summary.json is written (the trainer's last act)."""
    return (cfg.run_dir() / SUMMARY_FILE).is_file()


def _read_fold(run_dir: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    try:
        return (read_summary(run_dir), *load_predictions(run_dir))
    except InputError as err:
        raise InputError(f"{run_dir}: not a finished fold ({err})", hint="rerun the same command") from None


def write_cv(parent: Path, cfg: TrainConfig, labels: np.ndarray) -> dict[str, Any]:
    """Assemble the folds' OOF predictions, summary and averaged metrics into `parent`; return the cv record."""
    configs = fold_configs(cfg)
    pool = np.sort(np.concatenate([run_split(labels, c)[1] for c in configs]))
    where = {int(index): position for position, index in enumerate(pool)}
    probs: np.ndarray | None = None
    summaries, fold_acc, histories = [], [], []
    for fold_cfg in configs:
        summary, y_true, fold_probs = _read_fold(fold_cfg.run_dir())
        val_idx = run_split(labels, fold_cfg)[1]
        if not np.array_equal(y_true, labels[val_idx]):
            raise InputError(
                f"{fold_cfg.run_dir()}: its predictions are not of fold {fold_cfg.fold} of this data"
            )
        if probs is None:
            probs = np.zeros((len(pool), fold_probs.shape[1]), dtype=np.float32)
        probs[[where[int(i)] for i in val_idx]] = fold_probs
        summaries.append(summary)
        fold_acc.append(float((fold_probs.argmax(1) == y_true).mean()))
        histories.append(_history(fold_cfg.run_dir()))
    y_true = labels[pool]
    acc = float((probs.argmax(1) == y_true).mean())
    cv = {
        "folds": cfg.folds,
        "images": len(pool),
        "accuracy": acc,
        "standard_error": math.sqrt(acc * (1 - acc) / len(pool)),  # binomial, over the OOF images
        "fold_accuracies": fold_acc,
    }
    save_predictions(parent, y_true, probs)
    first = summaries[0]
    total_seconds = sum(s["train_seconds"] for s in summaries)
    summary = {
        **first,
        "train_seconds": total_seconds,
        "images_per_s": float(np.mean([s["images_per_s"] for s in summaries])),
        "best_val_acc": acc,
        "best_epoch": round(float(np.mean([s["best_epoch"] for s in summaries]))),
        "val_count": len(pool),
        "cv": cv,
        "fold_dirs": [f"{FOLD_PREFIX}{i}" for i in range(cfg.folds)],
    }
    write_json(parent / SUMMARY_FILE, summary)
    write_text(parent / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in _mean_history(histories)))
    return cv


def _history(run_dir: Path) -> list[dict[str, Any]]:
    return read_metrics(run_dir) if (run_dir / METRICS_FILE).is_file() else []


def _mean_history(histories: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per epoch, the mean of every numeric metric over the folds that reached that epoch."""
    out = []
    for epoch in range(1, max(len(h) for h in histories) + 1):
        rows = [r for h in histories for r in h if r.get("epoch") == epoch]
        keys = [k for k, v in rows[0].items() if isinstance(v, int | float) and k != "epoch"]
        out.append({"epoch": epoch, **{k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}})
    return out
