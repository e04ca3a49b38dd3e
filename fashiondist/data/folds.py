"""Which images a run trains and validates on: the private test split, K stratified folds, or one split.

    train_idx, val_idx = run_split(labels, cfg)     # what the trainer and the export checks both call

- `private_test: N` first sets aside about N images, stratified by class, with a seed fixed here once
  (`PRIVATE_TEST_SEED`, never a run's seed), so every run, recipe and fold excludes the same images and no
  choice (epochs, recipes, ensembles) ever looks at them; `private_split` gives them for the final score.
- `folds: K` with `fold: i` validates on the i-th of K stratified folds of the rest (seeded by the run's
  `split_seed`, else its seed) and trains on the other K - 1; the K folds together cover every remaining
  image exactly once.
- otherwise the usual stratified `val_fraction` split of the rest (the same as before when private_test is 0),
  seeded the same way.
"""

from __future__ import annotations

import numpy as np

from fashiondist.config import TrainConfig
from fashiondist.data.split import stratified_split
from fashiondist.errors import InputError

PRIVATE_TEST_SEED = (
    20_261_205  # chosen once (the date it was chosen); changing it would reshuffle every estimate
)


def private_split(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(the rest, the private test images): indices into `labels`, about `count` private, stratified."""
    if count <= 0:
        return np.arange(len(labels)), np.arange(0)
    if count >= len(labels):
        raise InputError(f"--private-test {count}: the data has only {len(labels)} labelled images")
    return stratified_split(labels, count / len(labels), PRIVATE_TEST_SEED)


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """K disjoint index arrays covering every position of `labels` once; each class dealt round-robin."""
    rng = np.random.default_rng(seed)
    folds: list[list[np.ndarray]] = [[] for _ in range(k)]
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        for i in range(k):
            # the class's leftover images go to different folds per class, so fold sizes stay within one
            folds[(i + offset) % k].append(members[i::k])
        offset += len(members) % k
    return [np.sort(np.concatenate(parts)) for parts in folds]


def run_split(labels: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) into `labels` for the run `cfg` describes (module doc)."""
    pool, _ = private_split(labels, cfg.private_test)
    if cfg.folds >= 2 and cfg.fold is not None:
        folds = stratified_folds(labels[pool], cfg.folds, cfg.data_seed())
        train = np.sort(np.concatenate([f for i, f in enumerate(folds) if i != cfg.fold]))
        return pool[train], pool[folds[cfg.fold]]
    train, val = stratified_split(labels[pool], cfg.val_fraction, cfg.data_seed())
    return pool[train], pool[val]
