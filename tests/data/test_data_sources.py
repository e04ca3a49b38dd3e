"""`--data` sources: the bundled sample's composition, torchvision's Fashion-MNIST offline, CSV and class checks."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest

from fashiondist.cli import main
from fashiondist.constants import FASHION_MNIST_CLASSES
from fashiondist.data.csvio import write_competition_csv
from fashiondist.data.idx import write_idx
from fashiondist.data.sources import available_splits, load_data, sample_test_labels
from fashiondist.errors import InputError


@pytest.fixture(scope="module")
def sample():
    return load_data("sample")


@pytest.fixture(scope="module")
def sample_test():
    return load_data("sample", split="test")


def test_sample_is_stratified_real_fashion_mnist(sample):
    assert sample.images.shape == (9000, 28, 28) and sample.images.dtype == np.uint8
    assert sample.labels.dtype == np.int64
    assert np.array_equal(np.bincount(sample.labels), [900] * 10)
    assert sample.num_classes == 10 and sample.class_names == FASHION_MNIST_CLASSES
    # real images: pixel statistics within 1 of the full training set's (constants.PIXEL_MEAN 72.94, STD 90.02)
    assert abs(sample.images.mean() - 72.94) < 1 and abs(sample.images.std() - 90.02) < 1


def test_sample_test_part_is_testx_shaped_and_disjoint(sample, sample_test):
    assert sample_test.images.shape == (1000, 28, 28) and sample_test.labels is None
    assert len(np.unique(sample_test.ids)) == 1000
    assert not np.array_equal(sample_test.ids, np.arange(1000)), "Ids are not row numbers"
    hidden = sample_test_labels()
    assert hidden.dtype == np.int64 and np.array_equal(np.bincount(hidden), [100] * 10)
    labelled = {image.tobytes() for image in sample.images}
    assert not any(image.tobytes() in labelled for image in sample_test.images)


def test_sample_images_are_the_official_ones(shared_data, sample_test):
    """The test part's Ids index the official training file, and its hidden labels are the official labels."""
    official = load_data(str(shared_data))
    np.testing.assert_array_equal(official.images[sample_test.ids], sample_test.images)
    np.testing.assert_array_equal(official.labels[sample_test.ids], sample_test_labels())


test_sample_images_are_the_official_ones = pytest.mark.shared_data(test_sample_images_are_the_official_ones)


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """An empty FASHIONDIST_CACHE and a network that refuses every download torchvision tries."""
    import torchvision.datasets.mnist

    def refuse(url, *args, **kwargs):
        raise URLError(f"network is unreachable (test): {url}")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", refuse)
    monkeypatch.setenv("FASHIONDIST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fashion_mnist_offline_is_one_clear_error(offline, capsys):
    with pytest.raises(InputError, match=r"could not download Fashion-MNIST into .*cache") as raised:
        load_data("fashion-mnist")
    assert "--data sample" in str(raised.value) and "--data PATH" in str(raised.value)
    assert main(["data", "info", "--data", "fashion-mnist"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("fashiondist: error: could not download") and captured.err.count("\n") == 1
    assert captured.out == ""


@pytest.mark.shared_data
def test_fashion_mnist_cached_files_work_offline(offline, shared_data):
    """torchvision's cache layout (FashionMNIST/raw/) with the shared files: no download is attempted."""
    raw = offline / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        os.symlink(shared_data / name, raw / name)
    train = load_data("fashion-mnist")
    assert train.source == "fashion-mnist" and len(train) == 60000
    assert np.array_equal(np.bincount(train.labels), [6000] * 10)
    test_part = load_data("fashion-mnist", split="test")  # t10k labels absent: an unlabelled test part
    assert len(test_part) == 10000 and test_part.labels is None


def test_csv_sources_hold_one_part(sample, tmp_path):
    write_competition_csv(tmp_path / "train.csv", sample.ids[:40], sample.images[:40], sample.labels[:40])
    write_competition_csv(tmp_path / "testX.csv", sample.ids[:40] * 7, sample.images[:40])
    assert available_splits(str(tmp_path / "train.csv")) == ("train",)
    assert available_splits(str(tmp_path / "testX.csv")) == ("test",)
    test_part = load_data(str(tmp_path / "testX.csv"), split="test")
    np.testing.assert_array_equal(test_part.ids, sample.ids[:40] * 7)
    with pytest.raises(
        InputError,
        match=r"testX\.csv: is a test file .* no labelled images to train or evaluate on \(hint: give a train\.csv .*; predict a testX\.csv with `fashiondist infer`\)$",
    ):
        load_data(str(tmp_path / "testX.csv"))
    with pytest.raises(
        InputError,
        match=r"train\.csv: is a train file .* no test part \(hint: a test part is a testX\.csv: Id and 784 pixels, no Label\)$",
    ):
        load_data(str(tmp_path / "train.csv"), split="test")


def test_train_on_a_test_csv_names_what_train_needs(sample, tmp_path, capsys):
    """`train --data testX.csv` once suggested `--split test`, an option train does not have."""
    test_csv = tmp_path / "testX.csv"
    write_competition_csv(test_csv, sample.ids[:40], sample.images[:40])
    out = tmp_path / "run"
    assert main(["train", "--model", "cnn", "--data", str(test_csv), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"fashiondist: error: {test_csv}: is a test file (it has no Label column), so it has no labelled images "
        "to train or evaluate on (hint: give a train.csv (Id, Label, 784 pixels); predict a testX.csv with "
        "`fashiondist infer`)\n"
    )
    assert not out.exists()
    # `data info`, which has --split, says which split the file has
    assert main(["data", "info", "--data", str(test_csv), "--split", "train"]) == 2
    assert capsys.readouterr().err == (
        f"fashiondist: error: --data {test_csv}: has no train part (hint: use --split test)\n"
    )


def test_five_class_relabelling(sample, tmp_path):
    write_competition_csv(tmp_path / "train.csv", sample.ids, sample.images, sample.labels // 2)
    five = load_data(str(tmp_path / "train.csv"))
    assert five.num_classes == 5 and five.class_names == ("0", "1", "2", "3", "4")
    assert np.array_equal(np.bincount(five.labels), [1800] * 5)


def test_labels_must_be_exactly_0_to_k_minus_1(sample, tmp_path):
    labels = sample.labels.copy()
    labels[labels == 2] = 1  # no image of class 2 left
    write_idx(tmp_path / "train-images-idx3-ubyte", sample.images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels.astype(np.uint8))
    with pytest.raises(InputError, match=r"labels must be exactly 0\.\.K-1; .* missing 2$"):
        load_data(str(tmp_path))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(len(labels), np.uint8))
    with pytest.raises(InputError, match="only one class"):
        load_data(str(tmp_path))


def test_unknown_source_and_split(tmp_path):
    with pytest.raises(
        InputError, match=r"--data 'fashion_mnist': no such file or directory; expected 'sample'"
    ):
        load_data("fashion_mnist")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt: expected a \.csv or \.csv\.gz file"):
        load_data(str(tmp_path / "notes.txt"))
    with pytest.raises(InputError, match="split 'val'"):
        load_data("sample", split="val")
