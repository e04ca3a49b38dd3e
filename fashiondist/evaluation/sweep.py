"""The evaluation stage's entry points: a whole sweep after training, or one run directory.

    report_sweep(Path("runs/sweep"), [Path("runs/sweep/cnn"), Path("runs/sweep/convnet")], results_console())
    evaluate_path(Path("runs/sweep"), results_console())        # what `fashiondist evaluate PATH` calls

A sweep writes, per variant, evaluation.json and the four plots into its run directory, and into the sweep
directory the comparison plot, leaderboard.{md,csv,json}, best.json (the export stage's input) and
report.html; the leaderboard goes to the given console (stdout). The main job calls `evaluate_sweep` (all
but report.html) and writes report.html once, at its end, with the export and submission in it. A single
run gets its evaluation.json, plots and its own report.html.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fashiondist.engine.run_record import describe_run
from fashiondist.errors import InputError
from fashiondist.evaluation.html import write_html_report
from fashiondist.evaluation.leaderboard import pick_best, print_leaderboard, write_best, write_leaderboard
from fashiondist.evaluation.plots import COMPARISON_FILE, write_comparison_plot, write_variant_plots
from fashiondist.evaluation.scores import VariantResult, evaluate_run
from fashiondist.run_layout import PREDICTIONS_FILE


def report_sweep(
    parent_dir: str | Path,
    run_dirs: Sequence[str | Path],
    console: Console,
    extra: dict[str, Any] | None = None,
) -> tuple[list[VariantResult], VariantResult]:
    """Evaluate every run, write all report files (report.html included), print the leaderboard."""
    results, best = evaluate_sweep(parent_dir, run_dirs, console)
    report = write_html_report(
        parent_dir, results, best, extra, comparison_plot=Path(parent_dir) / COMPARISON_FILE
    )
    console.print(f"report: {report}", highlight=False, markup=False)
    return results, best


def evaluate_sweep(
    parent_dir: str | Path, run_dirs: Sequence[str | Path], console: Console
) -> tuple[list[VariantResult], VariantResult]:
    """Evaluate every run, write every report file but report.html, print the leaderboard; (results, best).

    The export stage runs after this (it reads best.json); then `write_html_report(parent_dir, results, best,
    extra=summary, comparison_plot=parent_dir / COMPARISON_FILE)` writes the report once, export included.
    """
    if not run_dirs:
        raise InputError(f"{parent_dir}: no run directories to report on")
    parent_dir = Path(parent_dir)
    results = [evaluate_run(run_dir) for run_dir in run_dirs]
    _check_unique_names(results)
    for result in results:
        write_variant_plots(result)
    write_comparison_plot(parent_dir, results)
    best = pick_best(results)
    write_leaderboard(parent_dir, results)
    write_best(parent_dir, best)
    print_leaderboard(console, results, best)
    return results, best


def report_run(run_dir: str | Path, console: Console) -> VariantResult:
    """Evaluate one run directory: evaluation.json, plots and report.html in it; metrics to the console."""
    result = evaluate_run(run_dir)
    write_variant_plots(result)
    report = write_html_report(result.run_dir, [result], result)
    print_leaderboard(console, [result])
    print_class_report(console, result)
    print_run_record(console, result.run_dir)
    console.print(f"report: {report}", highlight=False, markup=False)
    return result


def evaluate_path(path: str | Path, console: Console) -> list[VariantResult]:
    """A run directory is reported alone; a sweep directory (runs as children) is reported as a sweep."""
    path = Path(path)
    if (path / PREDICTIONS_FILE).is_file():
        return [report_run(path, console)]
    children = (
        sorted(child for child in path.glob("*") if (child / PREDICTIONS_FILE).is_file())
        if path.is_dir()
        else []
    )
    if not children:
        raise InputError(
            f"{path}: neither a run directory nor a sweep directory (no {PREDICTIONS_FILE} in it or its children)",
            hint="pass a directory written by `fashiondist train`, e.g. runs/convnet",
        )
    results, _ = report_sweep(path, children, console)
    print_run_record(console, path)
    return results


def print_run_record(console: Console, run_dir: Path) -> None:
    """How the run was made (its run.json), when it has one."""
    run = describe_run(run_dir)
    if run is None:
        return
    table = Table(title=f"{Path(run_dir).name}: how the run was made (run.json)", show_header=False)
    table.add_column("item")
    table.add_column("value")
    for key, value in run.items():
        table.add_row(key, Text(value))
    console.print(table)


def print_class_report(console: Console, result: VariantResult) -> None:
    """Per-class precision, recall, F1, support and AUC: where a single model is weak."""
    report, auc = result.metrics["classification_report"], result.metrics["roc_auc"]["per_class"]
    table = Table(title=f"{result.name}: per class")
    table.add_column("class")
    for header in ("precision", "recall", "F1", "support", "AUC"):
        table.add_column(header, justify="right")
    for name in result.metrics["class_names"]:
        entry = report[name]
        scores = [f"{entry[key]:.4f}" for key in ("precision", "recall", "f1-score")]
        table.add_row(
            Text(name), *scores, str(int(entry["support"])), "-" if auc[name] is None else f"{auc[name]:.4f}"
        )
    console.print(table)


def _check_unique_names(results: Sequence[VariantResult]) -> None:
    """The leaderboard and best.json identify a variant by its run directory's name."""
    repeated = [name for name, count in Counter(r.name for r in results).items() if count > 1]
    if repeated:
        raise InputError(
            f"run directories share a name: {', '.join(repeated)}",
            hint="give each variant its own directory name",
        )
