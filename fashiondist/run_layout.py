"""The run directory's layout: the name of every file a run writes, and the one reader of each.

`fashiondist train --out runs/NAME` writes, in runs/NAME/:

- `config.yaml`: the resolved TrainConfig (`config.save_yaml`, read back by `config.load_saved_config`);
- `run.json`: how and where the run was made (`engine.run_record`);
- `metrics.jsonl`: one JSON object per finished epoch (`epoch`, `train_loss`, `val_loss`, `val_acc`, ...);
  read by `read_metrics`;
- `val_predictions.npz`: the best weights' validation predictions, y_true int64 [M] and probs float32 [M, K];
  read by `load_predictions`;
- `summary.json`: what was trained, how fast and how well (keys `SUMMARY_KEYS` at least); read by
  `read_summary`;
- `best/` and `last/`: the best epoch's weights, and the resumable state of the latest (`engine.run_checkpoint`,
  `models.checkpoint`);
- `evaluation.json`: written by `fashiondist evaluate` (`evaluation.scores`);
- `fold-i/`, `teacher_probs.npz`, `private_test.json`: a `--folds` run's folds, a distilled run's cached
  teacher probabilities, and the private split's score (`engine.folds`, `engine.distill`, `engine.private_test`).

Torch-free (numpy and json only), so every stage, the benchmarks and the torch-free inference side may import it.
Nothing here is ever loaded with pickle.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fashiondist.errors import InputError

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"  # one JSON object per epoch
PREDICTIONS_FILE = "val_predictions.npz"  # y_true int64 [M], probs float32 [M, K]
SUMMARY_FILE = "summary.json"
EVALUATION_FILE = "evaluation.json"
BEST_DIR = "best"
LAST_DIR = "last"
MODEL_FILE = "model.onnx"  # what `fashiondist export RUN` and the main job write into a run directory
FOLD_PREFIX = "fold-"  # a --folds run's i-th fold is an ordinary run in RUN/fold-i
TEACHER_FILE = "teacher_probs.npz"  # a distilled run's cached teacher probabilities (engine.distill)
PRIVATE_TEST_FILE = "private_test.json"  # the best weights scored on the private split (engine.private_test)

SUMMARY_KEYS = (
    "model",
    "params",
    "macs",
    "train_seconds",
    "images_per_s",
    "best_epoch",
    "epochs",
    "class_names",
)


def read_json(path: Path) -> Any:
    """A JSON file a run wrote; a missing or damaged one is one error naming it (and the line)."""
    if not path.is_file():
        raise InputError(f"{path}: not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}, line {err.lineno}: not valid JSON") from None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records in epoch order; a resumed run may repeat an epoch, and its later line wins."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found")
    by_epoch: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}, line {number}: not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise InputError(f"{path}, line {number}: expected a JSON object with an integer 'epoch'")
        by_epoch[record["epoch"]] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """summary.json, with the keys every reader relies on (`SUMMARY_KEYS`) checked."""
    path = Path(run_dir) / SUMMARY_FILE
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise InputError(f"{path}: expected a JSON object")
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)}")
    names = summary["class_names"]
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        # one JSON string would be taken as a list of its characters
        raise InputError(f"{path}: class_names must be a JSON list of names, got {type(names).__name__}")
    return summary


def load_predictions(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(y_true [M], probs [M, K]) from the run's .npz, never unpickling anything."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found", hint="evaluate a run directory written by `fashiondist train`")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = {"y_true", "probs"} - set(arrays.files)
            if missing:
                raise InputError(f"{path}: missing array(s) {', '.join(sorted(missing))}")
            return arrays["y_true"], arrays["probs"]
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable .npz of plain arrays ({err})") from None
