"""Every `--data` source as uint8 arrays: the bundled sample, torchvision's Fashion-MNIST, or a path.

    load_data("sample")                      # 9,000 labelled images bundled with the package (the default)
    load_data("sample", split="test")        # its 1,000 unlabelled images, shaped like testX.csv
    load_data("fashion-mnist")               # the full 60,000, downloaded once to $FASHIONDIST_CACHE
    load_data("path/to/idx_dir")             # train-/t10k-{images-idx3,labels-idx1}-ubyte[.gz]
    load_data("train.csv"); load_data("testX.csv", split="test")

`sample` and `fashion-mnist` are names, not paths: write `./sample` for a directory called sample.

A source has up to two parts: `train` (labelled, for training and validation) and `test` (images to
predict: the sample's testX part, the t10k files). A CSV file is one part; its header says which.
Classes are the distinct labels and must be exactly 0..K-1, so a 5-class relabelling works like the
10-class original. Torch-free: torchvision is imported only to download Fashion-MNIST.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashiondist.constants import LABEL_COLUMN, class_names_for
from fashiondist.data.csvio import csv_is_labelled, read_competition_csv
from fashiondist.data.idx import find_idx_file, read_idx_pair
from fashiondist.errors import CsvError, FashiondistError, InputError

SAMPLE = "sample"
FASHION_MNIST = "fashion-mnist"
SPLITS = ("train", "test")
SAMPLE_DIR = Path(__file__).with_name("sample")
SAMPLE_TEST_CSV = "testX.csv.gz"
SAMPLE_TEST_LABELS = "testY.csv"  # hidden labels of the sample's test part: tests only
IDX_STEMS = {  # split -> (images, labels) file names without `.gz`
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
OTHER_SOURCES_HINT = (
    "use --data sample (bundled with the package, no network) or --data PATH (a directory of IDX files, "
    "a train.csv or a testX.csv)"
)


@dataclass(frozen=True)
class Dataset:
    """One part of a data source, in memory."""

    images: np.ndarray  # uint8 [N, 28, 28], pixel scale 0..255
    labels: np.ndarray | None  # int64 [N] in 0..K-1; None where the part is unlabelled
    ids: np.ndarray  # int64 [N]: a CSV's Id column, else the row index
    class_names: tuple[str, ...]  # K names; () when unlabelled
    num_classes: int  # K; 0 when unlabelled
    source: str  # "sample", "fashion-mnist", or the path as given
    split: str  # "train" or "test"

    def __len__(self) -> int:
        return len(self.images)


def cache_dir() -> Path:
    """Where `fashion-mnist` is downloaded: $FASHIONDIST_CACHE, else ~/.cache/fashiondist."""
    return Path(os.environ.get("FASHIONDIST_CACHE") or Path.home() / ".cache" / "fashiondist").expanduser()


def _dataset(
    images: np.ndarray, labels: np.ndarray | None, ids: np.ndarray | None, source: str, split: str
) -> Dataset:
    if ids is None:
        ids = np.arange(len(images), dtype=np.int64)
    if labels is None:
        return Dataset(images, None, ids, (), 0, source, split)
    k = _num_classes(labels, source)
    return Dataset(images, labels, ids, class_names_for(k), k, source, split)


def _num_classes(labels: np.ndarray, source: str) -> int:
    """K, after checking that the labels present are exactly 0..K-1 (a gap would leave an untrainable class)."""
    present = np.unique(labels)
    if len(present) == 0:
        raise InputError(f"{source}: no labelled images")
    k = int(present[-1]) + 1
    if present[0] < 0 or len(present) != k:
        missing = sorted(set(range(k)) - set(present.tolist()))
        raise InputError(
            f"{source}: labels must be exactly 0..K-1; found {len(present)} distinct labels from "
            f"{present[0]} to {present[-1]}, missing {', '.join(map(str, missing[:10]))}"
        )
    if k < 2:
        raise InputError(f"{source}: only one class (label 0); a classifier needs at least 2")
    return k


# --- IDX directories (also the sample's and the download cache's layout) ---------------------------------


def _idx_files(directory: Path, split: str) -> tuple[Path | None, Path | None]:
    images_stem, labels_stem = IDX_STEMS[split]
    return find_idx_file(directory, images_stem), find_idx_file(directory, labels_stem)


def _load_idx_dir(directory: Path, split: str, source: str) -> Dataset:
    """A split's images (and labels: required for train, optional for test) from IDX files in `directory`."""
    images_path, labels_path = _idx_files(directory, split)
    images_stem, labels_stem = IDX_STEMS[split]
    if images_path is None or (split == "train" and labels_path is None):
        needed = f"{images_stem}[.gz]" + (f" and {labels_stem}[.gz]" if split == "train" else "")
        raise InputError(f"{directory}: no {split} part here; it needs {needed}")
    images, labels = read_idx_pair(images_path, labels_path)
    return _dataset(images, labels, None, source, split)


# --- fashion-mnist through torchvision -------------------------------------------------------------------


def _download_fashion_mnist(root: Path, split: str) -> None:
    """Fetch the raw files with torchvision into `root/FashionMNIST/raw/`; any failure is one InputError."""
    try:
        from torchvision.datasets import FashionMNIST

        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints progress; stdout is for results
            FashionMNIST(root=str(root), train=split == "train", download=True)
    except Exception as err:  # offline, DNS, HTTP, checksum, disk or a missing torchvision: all say the same
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise InputError(
            f"could not download Fashion-MNIST into {root}: {reason}", hint=OTHER_SOURCES_HINT
        ) from None


def _load_fashion_mnist(split: str) -> Dataset:
    """Read the cached raw files, downloading only when this split's files are missing, so it works offline.

    The test part needs only its images: t10k labels, when cached, come along, but their absence is no
    reason to go online.
    """
    root = cache_dir()
    raw = root / "FashionMNIST" / "raw"  # torchvision's layout
    images_path, labels_path = _idx_files(raw, split)
    if images_path is None or (split == "train" and labels_path is None):
        _download_fashion_mnist(root, split)
    return _load_idx_dir(raw, split, FASHION_MNIST)


# --- CSV files ---------------------------------------------------------------------------------------------


def _load_csv(path: Path, split: str, source: str) -> Dataset:
    labelled = csv_is_labelled(path)
    # the hints fit every command that loads data (train, evaluate, data info); `data info` adds its --split
    if labelled and split == "test":
        raise InputError(
            f"{path}: is a train file (it has a Label column), so it has no test part",
            hint="a test part is a testX.csv: Id and 784 pixels, no Label",
        )
    if not labelled and split == "train":
        raise InputError(
            f"{path}: is a test file (it has no Label column), so it has no labelled images to train or "
            "evaluate on",
            hint="give a train.csv (Id, Label, 784 pixels); predict a testX.csv with `fashiondist infer`",
        )
    table = read_competition_csv(path, labelled=labelled)
    if table.labels is not None:
        _check_label_gaps(path, table.labels)
    return _dataset(table.images, table.labels, table.ids, source, split)


def _check_label_gaps(path: Path, labels: np.ndarray) -> None:
    """Name the line of the first label above a class no row has (row i of a CSV is on line i + 2)."""
    present = np.unique(labels)
    missing = np.setdiff1d(np.arange(present[-1] + 1), present)
    if len(missing):
        row = int(np.flatnonzero(labels > missing[0])[0])
        raise CsvError(
            path,
            row + 2,
            LABEL_COLUMN,
            f"label {labels[row]} skips class {missing[0]}, which no row has; labels must be exactly 0..K-1",
        )


def _csv_split(labelled: bool) -> str:
    return "train" if labelled else "test"


def _is_csv(path: Path) -> bool:
    return path.suffix == ".csv" or path.name.endswith(".csv.gz")


def _resolve_path(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(
            f"--data {spec!r}: no such file or directory; expected {SAMPLE!r}, {FASHION_MNIST!r}, "
            "a directory of IDX files, a train.csv or a testX.csv"
        )
    if path.is_file() and not _is_csv(path):
        raise InputError(f"{path}: expected a .csv or .csv.gz file, or a directory of IDX files")
    return path


# --- public API ------------------------------------------------------------------------------------------


def load_data(spec: str, split: str = "train") -> Dataset:
    """One part (`train` or `test`) of the data source `spec`, validated, as uint8 images and int64 labels."""
    if split not in SPLITS:
        raise InputError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    if spec == SAMPLE:
        if split == "test":
            table = read_competition_csv(SAMPLE_DIR / SAMPLE_TEST_CSV, labelled=False)
            return _dataset(table.images, None, table.ids, SAMPLE, split)
        return _load_idx_dir(SAMPLE_DIR, split, SAMPLE)
    if spec == FASHION_MNIST:
        return _load_fashion_mnist(split)
    path = _resolve_path(spec)
    if path.is_dir():
        return _load_idx_dir(path, split, spec)
    return _load_csv(path, split, spec)


def available_splits(spec: str) -> tuple[str, ...]:
    """The parts `spec` has, found cheaply (file names, a CSV header) without loading any images."""
    if spec in (SAMPLE, FASHION_MNIST):
        return SPLITS
    path = _resolve_path(spec)
    if path.is_file():
        return (_csv_split(csv_is_labelled(path)),)
    found = tuple(s for s in SPLITS if _idx_files(path, s)[0] is not None)
    if not found:
        raise InputError(
            f"{path}: no IDX files here (train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz])"
        )
    return found


def sample_test_labels() -> np.ndarray:
    """int64 [1000] labels of the sample's test part, in the order of `load_data("sample", "test").ids`.

    Kept out of `load_data` on purpose: like the competition's, the test labels are only for scoring.
    """
    rows = np.loadtxt(SAMPLE_DIR / SAMPLE_TEST_LABELS, delimiter=",", skiprows=1, dtype=np.int64)  # [N, 2]
    ids = read_competition_csv(SAMPLE_DIR / SAMPLE_TEST_CSV, labelled=False).ids
    if not np.array_equal(rows[:, 0], ids):
        raise FashiondistError(
            f"{SAMPLE_DIR / SAMPLE_TEST_LABELS}: Ids do not match {SAMPLE_TEST_CSV}; rerun make_sample"
        )
    return rows[:, 1]
