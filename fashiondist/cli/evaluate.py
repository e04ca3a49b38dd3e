"""`fashiondist evaluate`: the full report (sklearn metrics, confusion matrix, ROC, plots) for saved models."""

from __future__ import annotations

import argparse
from pathlib import Path

from fashiondist.cli._common import DATA_HELP, formatter
from fashiondist.consoles import results_console

EXAMPLES = """\
examples:
  fashiondist evaluate runs/convnet                  # a run: its saved validation predictions
  fashiondist evaluate runs/sweep                    # every run of a multi-model run, with the leaderboard
  fashiondist evaluate runs/convnet/best --data holdout.csv --out runs/convnet-holdout
                                                     # a checkpoint on other labelled data (all its rows)
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="report accuracy, F1, per-class metrics, confusion matrix and ROC AUC of saved models",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter(),
    )
    p.add_argument(
        "path", metavar="RUN_DIR|CHECKPOINT", help="a run directory, a multi-model parent, or a checkpoint"
    )
    p.add_argument(
        "--data",
        metavar="SOURCE",
        help=f"evaluate the checkpoint on every labelled image of this source; {DATA_HELP}",
    )
    p.add_argument("--out", help="where a --data evaluation writes its report (default: PATH-eval)")
    p.add_argument("--batch-size", type=int, default=1024, help="images per forward pass")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashiondist.evaluation.sweep import evaluate_path, report_run

    console = results_console()
    if args.data is None:
        evaluate_path(args.path, console)
        return 0
    import shutil

    from fashiondist.engine.checkpoint_predictions import predict_checkpoint
    from fashiondist.output_paths import check_not_an_input, check_output_dir

    out = check_output_dir(args.out or f"{Path(args.path).resolve()}-eval", "--out")
    checkpoint = Path(args.path)
    # the report goes beside what it reads, never into it (a run directory, its best/, the data's directory)
    check_not_an_input(
        out,
        "--out",
        inputs=[args.data],
        run_dirs=[checkpoint if checkpoint.is_dir() else checkpoint.parent, args.data],
    )
    created = not out.exists()
    try:
        predict_checkpoint(args.path, args.data, out, batch_size=args.batch_size)
        report_run(out, console)
    except BaseException:
        if created:  # a report that failed halfway is no report: leave no partial directory behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    return 0
