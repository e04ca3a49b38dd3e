"""Options shared by several commands."""

from __future__ import annotations

import argparse

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


def formatter() -> type[argparse.HelpFormatter]:
    return argparse.RawDescriptionHelpFormatter
