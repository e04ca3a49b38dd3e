"""The submission CSV: `Id,Label` (plus `prob_0..prob_{K-1}` on request), one row per input row, in order.

Rows stream into an atomic temp file (`fashiondist.atomic_io`), which replaces the target only when every row is
written; on any error the temp file is removed and no output file remains.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fashiondist.atomic_io import atomic_write
from fashiondist.constants import SUBMISSION_COLUMNS
from fashiondist.errors import InputError


class SubmissionWriter:
    """Formats rows into an open text file; get one from `open_submission`."""

    def __init__(self, handle: io.TextIOBase, num_classes: int | None):
        self._handle = handle
        self.num_classes = num_classes  # set: also write the K probability columns
        self.rows = 0
        header = list(SUBMISSION_COLUMNS)
        if num_classes is not None:
            header += [f"prob_{k}" for k in range(num_classes)]
            self._row = "{},{}," + ",".join(["{:.6g}"] * num_classes) + "\n"
        handle.write(",".join(header) + "\n")

    def write(self, ids: np.ndarray, labels: np.ndarray, probs: np.ndarray | None = None) -> None:
        """Append rows: ids int [n], integer labels [n], and probs float [n, K] when the writer has K."""
        ids, labels = np.asarray(ids).tolist(), np.asarray(labels).astype(np.int64).tolist()
        if len(ids) != len(labels):
            raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
        if self.num_classes is None:
            self._handle.writelines(map("{},{}\n".format, ids, labels))
        else:
            if probs is None or probs.shape != (len(ids), self.num_classes):
                raise ValueError(f"probs must be [{len(ids)}, {self.num_classes}]")
            row = self._row
            self._handle.writelines(
                row.format(i, y, *p) for i, y, p in zip(ids, labels, probs.tolist(), strict=True)
            )
        self.rows += len(ids)


@contextlib.contextmanager
def open_submission(path: str | os.PathLike, num_classes: int | None = None) -> Iterator[SubmissionWriter]:
    """`with open_submission("submission.csv") as out: out.write(ids, labels)`: renamed into place on exit.

    `num_classes` set adds the `prob_k` columns. The output directory must exist (an InputError otherwise).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: the output directory {path.parent} does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file name for the submission CSV")
    with atomic_write(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        try:
            yield SubmissionWriter(text, num_classes)
        finally:
            text.detach()  # flushes; atomic_write then renames the file into place, or removes it on error


def write_submission(
    path: str | os.PathLike, ids: np.ndarray, labels: np.ndarray, probs: np.ndarray | None = None
) -> Path:
    """Write a whole submission at once (atomically); `probs` [N, K] adds the probability columns."""
    with open_submission(path, None if probs is None else probs.shape[1]) as out:
        out.write(ids, labels, probs)
    return Path(path)
