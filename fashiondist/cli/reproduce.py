"""`fashiondist reproduce`: rerun a recorded run and say whether it gives the same numbers, and if not why."""

from __future__ import annotations

import argparse

from fashiondist.cli._common import formatter, positive_int

EXAMPLES = """\
examples:
  fashiondist reproduce runs/convnet --epochs 2      # the first 2 epochs again, into runs/convnet-reproduce
  fashiondist reproduce runs/sweep/cnn --out /tmp/cnn-again
  OMP_NUM_THREADS=1 fashiondist reproduce runs/cnn --epochs 1     # what one thread changes
  fashiondist reproduce runs/cnn --epochs 1 --set precision=no    # what fp32 changes

exit status: 0 when the numbers are bitwise identical, or differ within the documented tolerance where the
environment differs (another CPU kind, torch, thread count, precision); 1 otherwise; 2 when the data's
sha256 is not the recorded one (or another input error).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="rerun a run from its run.json and config, and compare its metrics epoch by epoch",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter(),
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run directory with run.json, config.yaml, metrics.jsonl"
    )
    p.add_argument("--epochs", type=positive_int, help="rerun and compare the first N epochs (default: all)")
    p.add_argument("--out", help="where the rerun is written (default: RUN_DIR-reproduce; must be empty)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="change a config key on purpose (e.g. --set precision=no); the verdict names it",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fashiondist.config import parse_set_options
    from fashiondist.consoles import results_console
    from fashiondist.engine.reproduce import TOLERANCE, reproduce_run

    rep = reproduce_run(args.run_dir, args.epochs, args.out, parse_set_options(args.set))
    out = results_console()
    table = Table(title=f"{rep.run_dir} vs {rep.out_dir}, epochs 1-{rep.epochs}")
    for header in ("metric", "largest |difference|", "at epoch", "tolerance elsewhere"):
        table.add_column(header, justify="left" if header == "metric" else "right")
    for diff in rep.diffs:
        table.add_row(
            diff.metric,
            "0 (bitwise)" if diff.max_abs_diff == 0 else f"{diff.max_abs_diff:.3g}",
            "-" if diff.epoch is None else str(diff.epoch),
            f"{TOLERANCE[diff.metric]:g}",
        )
    out.print(table)
    out.print(f"verdict: {rep.verdict}", highlight=False, markup=False)
    return rep.exit_code
