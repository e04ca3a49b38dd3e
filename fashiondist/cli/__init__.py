"""The `fashiondist` command line: thin commands over the stages.

    fashiondist data info --data sample                     # what a data source holds
    fashiondist train --models all                          # train, select, export, report
    fashiondist infer testX.csv --model model.onnx --out submission.csv
    fashiondist reproduce runs/convnet --epochs 2           # rerun a run, compare with its metrics
    fashiondist doctor                                      # this machine, and what fashiondist does on it

Each command group lives in its own module with a `register(subparsers)` function; heavy imports (torch,
onnxruntime) happen inside the command, so `fashiondist --help` and `fashiondist infer` start fast.
Results go to stdout, logs and progress to stderr. Known errors become one line with a hint: exit 2 for
bad input (a malformed CSV, a wrong model file, a bad option), exit 1 for other known failures.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fashiondist import __version__
from fashiondist.errors import FashiondistError

# Command modules, in the order their commands appear in `--help`.
COMMAND_MODULES = (
    "fashiondist.cli.data",
    "fashiondist.cli.models",
    "fashiondist.cli.train",
    "fashiondist.cli.reproduce",
    "fashiondist.cli.evaluate",
    "fashiondist.cli.export",
    "fashiondist.cli.infer",
    "fashiondist.cli.bench",
    "fashiondist.cli.doctor",
)


class OneLineErrorParser(argparse.ArgumentParser):
    """A bad option is one line on stderr (argparse would print the usage first) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; given a known `command`, only that command's module is imported and registered
    (`fashiondist infer` then skips the config module and rich that other commands' options import)."""
    parser = OneLineErrorParser(
        prog="fashiondist",
        description="Train, select, export and serve Fashion-MNIST-style classifiers, "
        "from a CSV to a scored Kaggle submission.",
        epilog="Run `fashiondist COMMAND --help` for the options and examples of each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fashiondist {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    known = {name.rsplit(".", 1)[1]: name for name in COMMAND_MODULES}  # each module registers its namesake
    for name in [known[command]] if command in known else COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FashiondistError as err:
        print(f"fashiondist: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("fashiondist: interrupted", file=sys.stderr)
        return 130
