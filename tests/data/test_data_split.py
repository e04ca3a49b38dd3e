"""The stratified split on the sample's real labels: proportional per class, disjoint, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from fashiondist.data.sources import load_data
from fashiondist.data.split import stratified_split
from fashiondist.errors import InputError


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return load_data("sample").labels


def test_every_class_is_held_out_in_proportion(labels):
    train_idx, val_idx = stratified_split(labels, 0.1, seed=0)
    assert train_idx.dtype == val_idx.dtype == np.int64
    assert len(val_idx) == 900 and len(train_idx) == 8100
    assert np.array_equal(np.bincount(labels[val_idx]), [90] * 10)
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)  # sorted, no repeats
    assert np.array_equal(np.union1d(train_idx, val_idx), np.arange(len(labels)))  # disjoint and complete


def test_uneven_classes_round_to_the_exact_total(labels):
    """A 5-class relabelling with one class cut short: per-class shares within one image, total exact."""
    five = labels // 2  # 0..4, like the competition's 5-class CSV
    keep = np.flatnonzero((five != 3) | (np.arange(len(five)) % 3 == 0))  # class 3 keeps a third
    subset = five[keep]
    _, val_idx = stratified_split(subset, 0.15, seed=3)
    assert len(val_idx) == round(len(subset) * 0.15)
    share = np.bincount(subset[val_idx], minlength=5) / np.bincount(subset)
    assert np.all(np.abs(share - 0.15) * np.bincount(subset) <= 1)


def test_deterministic_per_seed(labels):
    first = stratified_split(labels, 0.1, seed=7)
    again = stratified_split(labels, 0.1, seed=7)
    other = stratified_split(labels, 0.1, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])


def test_every_class_keeps_a_training_image():
    labels = np.array([0, 0, 0, 0, 1, 1])
    train_idx, val_idx = stratified_split(labels, 0.9, seed=0)
    assert set(labels[train_idx]) == {0, 1} and len(val_idx) == 4


def test_bad_fraction_and_empty_validation():
    with pytest.raises(InputError, match="between 0 and 1"):
        stratified_split(np.array([0, 1, 0, 1]), 1.0, seed=0)
    with pytest.raises(InputError, match="leaves no validation images"):
        stratified_split(np.array([0, 1, 0, 1]), 0.01, seed=0)
