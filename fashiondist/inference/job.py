"""A whole inference job, CSV in, submission out: what `fashiondist infer` and the main job's last step run."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fashiondist.constants import INFER_BATCH_SIZE
from fashiondist.inference.predict import predict_csv
from fashiondist.inference.session import ModelSession, open_session
from fashiondist.inference.submission import open_submission
from fashiondist.output_paths import check_output_file


@dataclass(frozen=True)
class InferResult:
    out: Path
    rows: int
    seconds: float
    model: ModelSession
    accuracy: float | None  # on the CSV's own labels, when it has a Label column


def infer_csv(
    model_path: str | os.PathLike,
    csv_path: str | os.PathLike,
    out: str | os.PathLike,
    batch_size: int = INFER_BATCH_SIZE,
    provider: str = "auto",
    threads: int | None = None,
    probs: bool = False,
    on_rows: Callable[[int], None] | None = None,
    model: ModelSession | None = None,
) -> InferResult:
    """Predict every row of `csv_path` and write `Id,Label` (plus probabilities) to `out`, atomically."""
    start = time.perf_counter()
    csv_path, out = Path(csv_path), Path(out)
    check_output_file(out, "--out", inputs={"the input CSV": csv_path, "the model": model_path})
    model = model or open_session(model_path, provider, threads)
    correct = labelled = 0
    with open_submission(out, model.num_classes if probs else None) as writer:
        for chunk in predict_csv(model, csv_path, batch_size, on_rows=on_rows):
            predictions = chunk.predictions
            writer.write(chunk.ids, predictions, chunk.probs if probs else None)
            if chunk.labels is not None:
                correct += int((predictions == chunk.labels).sum())
                labelled += len(chunk.labels)
    accuracy = correct / labelled if labelled else None
    return InferResult(out, writer.rows, time.perf_counter() - start, model, accuracy)
