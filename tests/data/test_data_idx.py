"""IDX directories as a `--data` source: real files read back exactly, damaged ones refused naming the file."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from fashiondist.data.idx import read_idx_images, read_idx_labels, write_idx
from fashiondist.data.sources import available_splits, load_data
from fashiondist.errors import InputError


@pytest.fixture(scope="module")
def sample():
    return load_data("sample")


@pytest.fixture
def idx_dir(sample, tmp_path) -> Path:
    """The sample's first 500 images as raw (uncompressed) train IDX files, plus 200 t10k images."""
    write_idx(tmp_path / "train-images-idx3-ubyte", sample.images[:500])
    write_idx(tmp_path / "train-labels-idx1-ubyte", sample.labels[:500].astype(np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", sample.images[500:700])
    return tmp_path


def test_raw_and_gz_read_the_same(sample, idx_dir):
    data = load_data(str(idx_dir))
    np.testing.assert_array_equal(data.images, sample.images[:500])
    np.testing.assert_array_equal(data.labels, sample.labels[:500])
    np.testing.assert_array_equal(data.ids, np.arange(500))
    assert data.num_classes == 10 and data.class_names[0] == "T-shirt/top"
    for path in idx_dir.iterdir():
        (idx_dir / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    np.testing.assert_array_equal(load_data(str(idx_dir)).images, sample.images[:500])


def test_test_part_labels_are_optional(sample, idx_dir):
    assert available_splits(str(idx_dir)) == ("train", "test")
    test_part = load_data(str(idx_dir), split="test")
    assert test_part.labels is None and test_part.num_classes == 0
    np.testing.assert_array_equal(test_part.images, sample.images[500:700])
    write_idx(idx_dir / "t10k-labels-idx1-ubyte", sample.labels[500:700].astype(np.uint8))
    np.testing.assert_array_equal(load_data(str(idx_dir), split="test").labels, sample.labels[500:700])


@pytest.mark.shared_data
def test_written_idx_matches_the_official_bytes(shared_data, tmp_path):
    """Our writer reproduces the official (decompressed) file exactly, header included."""
    official = gzip.decompress((shared_data / "train-labels-idx1-ubyte.gz").read_bytes())
    write_idx(
        tmp_path / "labels", read_idx_labels(shared_data / "train-labels-idx1-ubyte.gz").astype(np.uint8)
    )
    assert (tmp_path / "labels").read_bytes() == official


def _expect(error: str, directory: Path, split: str = "train") -> None:
    with pytest.raises(InputError, match=error):
        load_data(str(directory), split=split)


def test_wrong_magic_number(idx_dir):
    shutil.copy(idx_dir / "train-labels-idx1-ubyte", idx_dir / "train-images-idx3-ubyte")
    _expect(
        r"train-images-idx3-ubyte: not a 3-D uint8 IDX file \(magic number 0x00000801, expected 0x00000803\)",
        idx_dir,
    )


def test_wrong_image_size(idx_dir):
    write_idx(idx_dir / "train-images-idx3-ubyte", np.zeros((500, 32, 32), np.uint8))
    _expect(r"train-images-idx3-ubyte: images are 32x32, expected 28x28", idx_dir)


def test_truncated_file(idx_dir):
    path = idx_dir / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    _expect(
        r"train-images-idx3-ubyte: IDX dimensions 500x28x28 need 392016 bytes, the file has 391916 \(truncated\?\)",
        idx_dir,
    )


def test_counts_must_agree(sample, idx_dir):
    write_idx(idx_dir / "train-labels-idx1-ubyte", sample.labels[:499].astype(np.uint8))
    _expect(r"train-labels-idx1-ubyte: 499 labels for 500 images in train-images-idx3-ubyte", idx_dir)


def test_damaged_gzip(idx_dir):
    (idx_dir / "train-images-idx3-ubyte").unlink()
    (idx_dir / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 40)
    _expect(r"train-images-idx3-ubyte\.gz: not a readable gzip file", idx_dir)


def test_missing_files(idx_dir):
    (idx_dir / "train-labels-idx1-ubyte").unlink()
    _expect(
        r"no train part here; it needs train-images-idx3-ubyte\[\.gz\] and train-labels-idx1-ubyte\[\.gz\]",
        idx_dir,
    )
    for path in idx_dir.iterdir():
        path.unlink()
    with pytest.raises(InputError, match="no IDX files here"):
        available_splits(str(idx_dir))


def test_reader_checks_rank(idx_dir):
    with pytest.raises(InputError, match="not a 1-D uint8 IDX file"):
        read_idx_labels(idx_dir / "train-images-idx3-ubyte")
    assert read_idx_images(idx_dir / "train-images-idx3-ubyte").shape == (500, 28, 28)
