"""A seeded, stratified train/validation split (numpy only).

Every process of a distributed run calls this with the same labels and seed and gets the same split, so
no rank ever validates on another rank's training images. Stratified, so each class is held out in the
same proportion and a 5-class and a 10-class problem are validated alike.
"""

from __future__ import annotations

import numpy as np

from fashiondist.errors import InputError


def _val_counts(class_sizes: np.ndarray, val_fraction: float) -> np.ndarray:
    """Validation images per class: proportional, summing to round(N * val_fraction) (largest remainder).

    Ties in the remainder go to the lower class index, so the counts are a pure function of the inputs.
    """
    quotas = class_sizes * val_fraction
    counts = np.floor(quotas).astype(np.int64)
    short = int(round(class_sizes.sum() * val_fraction)) - int(counts.sum())
    by_remainder = np.argsort(-(quotas - counts), kind="stable")
    counts[by_remainder[:short]] += 1
    return np.minimum(counts, class_sizes - 1)  # every class keeps at least one training image


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): sorted int64 indices into `labels`, disjoint, together covering every row.

    Each class contributes its share of validation images, drawn with `np.random.default_rng(seed)`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction {val_fraction} must be between 0 and 1")
    _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    counts = _val_counts(sizes, val_fraction)
    if counts.sum() == 0:
        raise InputError(
            f"val_fraction {val_fraction} of {len(labels)} images leaves no validation images; "
            "use a larger fraction or more data"
        )
    rng = np.random.default_rng(seed)
    val_parts = [rng.permutation(np.flatnonzero(inverse == c))[:n] for c, n in enumerate(counts)]
    val_idx = np.sort(np.concatenate(val_parts)).astype(np.int64)
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val_idx] = True
    return np.flatnonzero(~is_val).astype(np.int64), val_idx
