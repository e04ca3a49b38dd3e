"""Batch prediction: uint8 images (in memory or streamed from a competition CSV) -> class probabilities.

A CSV is read in chunks through the data layer's torch-free reader, so memory stays bounded by one chunk
whatever the number of rows, and every row is validated exactly as training data is.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from fashiondist.constants import IMAGE_SHAPE, INFER_BATCH_SIZE
from fashiondist.data.csvio import DEFAULT_CHUNK_ROWS, iter_csv_chunks
from fashiondist.errors import InputError
from fashiondist.inference.prefetch import prefetched
from fashiondist.inference.session import ModelSession

# Chunks parsed ahead of the one onnxruntime predicts: one keeps the parser busy while the model runs, a
# second absorbs a slow chunk (a gzip block, a page fault); memory stays bounded at ~3 chunks of pixels.
PREFETCH_CHUNKS = 2
# The first chunk's rows: about what one segment of the reader holds (a 4 MB segment of a testX.csv is ~1,800
# rows), so onnxruntime starts on the file's first segment rather than after the first DEFAULT_CHUNK_ROWS.
FIRST_CHUNK_ROWS = 1024


@dataclass(frozen=True)
class ChunkPrediction:
    ids: np.ndarray  # int64 [n], in file order
    probs: np.ndarray  # float32 [n, K]
    labels: np.ndarray | None  # int64 [n] when the CSV is labelled (a train.csv), else None

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def predict_proba(model: ModelSession, images: np.ndarray, batch_size: int = INFER_BATCH_SIZE) -> np.ndarray:
    """uint8 images [N, 28, 28] or [N, 1, 28, 28] -> float32 probabilities [N, K], in batches.

    A model that outputs NaN or infinity for any image is refused (InputError naming the first image): its
    argmax would be a silent label 0.
    """
    probs = _predict(model, images, batch_size)
    _refuse_non_finite(model, probs, lambda row: f"image {row}")
    return probs


def _predict(model: ModelSession, images: np.ndarray, batch_size: int) -> np.ndarray:
    pixels = _pixels(images)
    out = np.empty((len(pixels), model.num_classes), dtype=np.float32)
    starts = range(0, len(pixels), batch_size)
    batches = (pixels[start : start + batch_size] for start in starts)
    for start, probs in zip(starts, model.predict_batches(batches), strict=True):
        out[start : start + batch_size] = probs
    return out


def _pixels(images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 on the 0..255 scale, got {images.dtype}")
    return np.ascontiguousarray(images).reshape(-1, *IMAGE_SHAPE)  # [N, 28, 28] -> [N, 1, 28, 28], a view


def _refuse_non_finite(model: ModelSession, probs: np.ndarray, where: Callable[[int], str]) -> None:
    """InputError when a row of probs [n, K] holds NaN or infinity: how many rows, and `where(first row)`."""
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if len(bad):
        raise InputError(
            f"{model.path}: model {model.model_name} outputs NaN or infinite probabilities for {len(bad):,} "
            f"of {len(probs):,} rows, the first at {where(int(bad[0]))}",
            hint="the model is broken; train or export it again",
        )


def predict_csv(
    model: ModelSession,
    csv_path: str | os.PathLike,
    batch_size: int = INFER_BATCH_SIZE,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,  # the data layer's: memory is bounded by one chunk, whatever the rows
    on_rows: Callable[[int], None] | None = None,
) -> Iterator[ChunkPrediction]:
    """Stream a competition CSV (testX.csv or train.csv): one ChunkPrediction per chunk, in file order.

    The next chunks are read and validated in a background thread while the model predicts this one
    (`prefetched`), and the batches of consecutive chunks flow to the model as one stream, so its parallel
    runs never wait for a chunk's last batch. A malformed row raises the data layer's CsvError (file, line,
    column) when its chunk is reached, after every chunk before it; a row the model outputs NaN or infinity
    for, an InputError naming its line.
    """
    chunks: deque = deque()  # (table, its probabilities, how many rows of them are filled), in file order

    def batches() -> Iterator[np.ndarray]:
        first = min(chunk_rows, FIRST_CHUNK_ROWS)
        source = iter_csv_chunks(csv_path, chunk_rows=chunk_rows, first_chunk_rows=first)
        with contextlib.closing(prefetched(source, PREFETCH_CHUNKS)) as tables:
            for table in tables:
                pixels = _pixels(table.images)
                chunks.append([table, np.empty((len(pixels), model.num_classes), dtype=np.float32), 0])
                for start in range(0, len(pixels), batch_size):
                    yield pixels[start : start + batch_size]

    line = 2  # editor line of the first row of the chunk at the front (the header is line 1)

    def finished() -> Iterator[ChunkPrediction]:
        nonlocal line
        while chunks and chunks[0][2] == len(chunks[0][0]):
            table, probs, _ = chunks.popleft()
            _refuse_non_finite(model, probs, lambda row, first=line: f"{csv_path}, line {first + row}")
            if on_rows is not None:
                on_rows(len(table.ids))
            yield ChunkPrediction(table.ids, probs, table.labels)
            line += len(table)

    results = model.predict_batches(batches())
    with contextlib.closing(results):
        for probs in results:
            yield from finished()  # a chunk of no rows ahead of this batch's
            chunk = chunks[0]  # the earliest chunk not yet filled: batches come back in file order
            chunk[1][chunk[2] : chunk[2] + len(probs)] = probs
            chunk[2] += len(probs)
            yield from finished()
    yield from finished()
