"""Regenerate the bundled sample (`fashiondist/data/sample/`) from the official Fashion-MNIST training files.

    python -m fashiondist.data.make_sample --src ../shared/data/fashion-mnist --out fashiondist/data/sample

Only the 60,000 labelled training images are used (the official test labels are not ours to use), and the
sample is carved from them, stratified and disjoint:

- labelled part, 9,000 images (900 per class): `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`.
  Enough for a small CNN to pass 85% validation accuracy in a minute or two on two CPU cores.
- test part, 1,000 images (100 per class): `testX.csv.gz`, shaped like the competition's testX.csv
  (`Id,0..783`). Its Ids are the images' indices in the official training file, so they are unique but
  not 0..N-1: an inference that writes row numbers instead of Ids fails the tests.
- `testY.csv` (`Id,Label`): the test part's labels, for tests only; `load_data` never reads it.

Both parts keep the order of the official file. The output is byte-for-byte reproducible: a fixed seed,
NumPy's stable PCG64 stream, and gzip with no timestamp or file name in its header.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fashiondist.atomic_io import atomic_write
from fashiondist.constants import FASHION_MNIST_CLASSES
from fashiondist.data.csvio import write_competition_csv
from fashiondist.data.idx import find_idx_file, read_idx_pair, write_idx
from fashiondist.errors import FashiondistError, InputError

SEED = 20240229  # fixed: changing it changes every bundled byte
TRAIN_PER_CLASS = 900
TEST_PER_CLASS = 100
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_CSV = "testX.csv.gz"
TEST_LABELS = "testY.csv"

README = f"""# Bundled sample: a real, stratified subset of Fashion-MNIST

Carved from the 60,000 official training images of Zalando's Fashion-MNIST (MIT licence,
https://github.com/zalandoresearch/fashion-mnist) by `python -m fashiondist.data.make_sample`.

- `{TRAIN_IMAGES}`, `{TRAIN_LABELS}`: {TRAIN_PER_CLASS * 10:,} labelled images, {TRAIN_PER_CLASS} per class (IDX).
- `{TEST_CSV}`: {TEST_PER_CLASS * 10:,} other images, {TEST_PER_CLASS} per class, as a competition testX.csv
  (`Id,0..783`; Id = the image's index in the official training file).
- `{TEST_LABELS}`: their labels (`Id,Label`), used only by the tests.

Classes: {", ".join(f"{k} {name}" for k, name in enumerate(FASHION_MNIST_CLASSES))}.
"""


def select(labels: np.ndarray, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the labelled and the test part: per class, a seeded draw of 900 + 100, each sorted."""
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for k in range(len(FASHION_MNIST_CLASSES)):
        need = TRAIN_PER_CLASS + TEST_PER_CLASS
        drawn = rng.permutation(np.flatnonzero(labels == k))[:need]
        if len(drawn) < need:
            raise InputError(f"class {k} has only {len(drawn)} images; the sample needs {need}")
        train_parts.append(drawn[:TRAIN_PER_CLASS])
        test_parts.append(drawn[TRAIN_PER_CLASS:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(test_parts))


def make_sample(src: Path, out: Path) -> None:
    """Write the sample files from the official training IDX files in `src` into `out`."""
    images_path = find_idx_file(src, "train-images-idx3-ubyte")
    labels_path = find_idx_file(src, "train-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        raise InputError(f"{src}: needs train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]")
    images, labels = read_idx_pair(images_path, labels_path)
    assert labels is not None  # a labels path was given
    train_idx, test_idx = select(labels)
    out.mkdir(parents=True, exist_ok=True)
    write_idx(out / TRAIN_IMAGES, images[train_idx])
    write_idx(out / TRAIN_LABELS, labels[train_idx].astype(np.uint8))
    write_competition_csv(out / TEST_CSV, test_idx, images[test_idx])
    with atomic_write(out / TEST_LABELS) as f:
        rows = "".join(f"{i},{y}\n" for i, y in zip(test_idx, labels[test_idx], strict=True))
        f.write(f"Id,Label\n{rows}".encode())
    with atomic_write(out / "README.md") as f:
        f.write(README.encode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--src", type=Path, required=True, help="directory with the official training IDX files"
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the sample files")
    args = parser.parse_args(argv)
    try:
        make_sample(args.src, args.out)
    except FashiondistError as err:
        raise SystemExit(f"make_sample: error: {err}") from None


if __name__ == "__main__":
    main()
