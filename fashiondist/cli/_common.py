"""Options shared by several commands."""

from __future__ import annotations

import argparse
import os

DATA_HELP = (
    "where the images come from: `sample` (default; a small real Fashion-MNIST subset bundled with the "
    "package), `fashion-mnist` (torchvision's download, cached under $FASHIONDIST_CACHE), or a path: a "
    "directory of IDX files (.gz or raw), a Kaggle-style train.csv (Id, Label, 784 pixels) or testX.csv "
    "(Id, 784 pixels)"
)


def add_data_option(parser: argparse.ArgumentParser, default: str = "sample") -> None:
    parser.add_argument("--data", default=default, metavar="SOURCE", help=DATA_HELP)


def positive_int(text: str) -> int:
    """argparse `type=` for counts: an integer >= 1, else argparse's one-line error naming the option."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def max_threads() -> int:
    """The most threads a command may ask for: this machine's logical CPUs. More cannot run at once and only
    contend (onnxruntime with 1,000 threads took 42 s for 30 rows; 10,000 did not finish)."""
    return os.cpu_count() or 1


def thread_count(text: str) -> int:
    """argparse `type=` for --threads: an integer in 1..max_threads()."""
    value = positive_int(text)
    if value > max_threads():
        raise argparse.ArgumentTypeError(
            f"{value} is more than this machine's {max_threads()} logical CPUs (the most that can run at once)"
        )
    return value


def points(text: str) -> float:
    """argparse `type=` for an accuracy drop in percentage points: a number in 0..100."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 100.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text} must be in 0..100 (percentage points)")
    return value


def formatter() -> type[argparse.HelpFormatter]:
    return argparse.RawDescriptionHelpFormatter
