"""The `fashiondist` command line: thin commands over the stages.

    fashiondist data info --data sample                     # what a data source holds
    fashiondist train --models all                          # train, select, export, report
    fashiondist infer testX.csv --model model.onnx --out submission.csv
    fashiondist reproduce runs/convnet --epochs 2           # rerun a run, compare with its metrics
    fashiondist doctor                                      # this machine, and what fashiondist does on it

Each command group lives in its own module with a `register(subparsers)` function; heavy imports (torch,
onnxruntime) happen inside the command, so `fashiondist --help` and `fashiondist infer` start fast.
Results go to stdout, logs and progress to stderr. Known errors become one line with a hint: exit 2 for
bad input (a malformed CSV, a wrong model file, a bad option) and for a write the file system refuses (a
full disk, a read-only mount, no permission), exit 1 for other known failures. Every error line starts
`fashiondist: error:`, an option error of a command included (its hint names the command's --help), and
stays one line: a newline or other control character in a path or value is shown escaped (`\\n`).
"""

from __future__ import annotations

import argparse
import importlib
import re
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


# C0 and C1 control characters (newline, carriage return, escape, ...) and the Unicode line separators: any
# of them in a path or value would split the one error line, or rewrite the terminal's.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with every control character shown as an escape (a newline as `\\n`), so it prints as one line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def error_line(message: str) -> str:
    """The one line every error prints on stderr."""
    return f"fashiondist: error: {one_line(message)}\n"


class OneLineErrorParser(argparse.ArgumentParser):
    """A bad option is one line on stderr (argparse would print the usage first) and exit code 2; it reads
    `fashiondist: error:` like every other error, the command named in the hint."""

    def error(self, message: str):
        self.exit(2, error_line(f"{message} (see `{self.prog} --help`)"))


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
        sys.stderr.write(error_line(str(err)))
        return err.exit_code
    except OSError as err:
        # the file system refused a file outside atomic_io (a checkpoint's temp directory, a rename, a mkdir)
        from fashiondist.atomic_io import WRITE_REFUSALS

        if err.errno not in WRITE_REFUSALS:
            raise
        where = f"{err.filename}: " if err.filename is not None else ""
        sys.stderr.write(
            error_line(f"{where}{err.strerror or type(err).__name__} (hint: {WRITE_REFUSALS[err.errno]})")
        )
        return 2
    except KeyboardInterrupt:
        print("fashiondist: interrupted", file=sys.stderr)
        return 130
