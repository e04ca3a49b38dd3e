"""What data a run saw, by content: a sha256 of its uint8 images and int64 labels, not of a file.

    data_digest(images, labels)      # "sha256:9f2c..." over shape, pixels and labels
    data_record(load_data("train.csv"))

Two forms of the same images (the IDX files and the train.csv `fashiondist data export-csv` writes from
them) give the same digest; one changed pixel or label gives another. Torch-free, like the rest of data/.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from fashiondist.data.sources import FASHION_MNIST, SAMPLE, Dataset

DIGEST_PREFIX = "sha256:"


def data_digest(images: np.ndarray, labels: np.ndarray | None) -> str:
    """sha256 over the images' shape and uint8 pixels (row-major), then the labels as little-endian int64."""
    h = hashlib.sha256()
    h.update(f"images uint8 {list(images.shape)}\n".encode())  # the shape: [N, 28, 28]
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    if labels is not None:
        h.update(f"labels int64 {len(labels)}\n".encode())
        h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return DIGEST_PREFIX + h.hexdigest()


def data_record(data: Dataset) -> dict[str, Any]:
    """The data part of run.json: where it came from, how much of it, and its digest."""
    source = data.source
    path = None if source in (SAMPLE, FASHION_MNIST) else str(Path(source).resolve())
    return {
        "source": source,
        "path": path,  # absolute, so a rerun from another directory finds it
        "split": data.split,
        "images": len(data.images),
        "labels": 0 if data.labels is None else len(data.labels),
        "num_classes": data.num_classes,
        "sha256": data_digest(data.images, data.labels),
    }
