"""Rank the variants, pick the best, and write the leaderboard and best.json (the export stage's input).

Ranking: validation accuracy, highest first; a tie is broken by macro F1 (the better-balanced model wins);
a tie on both keeps the order the variants were given in, so the choice is deterministic. The files:
`leaderboard.md` (for people), `leaderboard.csv` and `leaderboard.json` (raw numbers, same rows, same
order), and `best.json`, which names the chosen run directory relative to the sweep directory so that the
sweep can be moved or copied as a whole.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fashiondist.atomic_io import write_json, write_text
from fashiondist.errors import InputError
from fashiondist.evaluation.scores import VariantResult

LEADERBOARD_FILES = {"md": "leaderboard.md", "csv": "leaderboard.csv", "json": "leaderboard.json"}
BEST_FILE = "best.json"
SELECTION_RULE = "highest validation accuracy; ties broken by macro F1"


@dataclass(frozen=True)
class Column:
    header: str
    render: Callable[[dict[str, Any]], str]  # a row of raw values -> the text shown in md and the table
    numeric: bool = True


def _number(key: str, spec: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: "-" if row[key] is None else format(row[key], spec)


def _count(key: str) -> Callable[[dict[str, Any]], str]:
    """Parameter and MAC counts as 1.23M / 45.60K: the digits that matter at a glance."""

    def render(row: dict[str, Any]) -> str:
        value = row[key]
        if value is None:
            return "-"
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
            if abs(value) >= scale:
                return f"{value / scale:.2f}{suffix}"
        return str(value)

    return render


COLUMNS = (
    Column("model", lambda row: row["model"], numeric=False),
    Column("val acc", _number("val_acc", ".2%")),
    Column(
        "CV acc ± SE",
        lambda row: "-" if row["cv_acc"] is None else f"{row['cv_acc']:.2%} ± {row['cv_se']:.2%}",
    ),
    Column("macro F1", _number("macro_f1", ".4f")),
    Column("weighted F1", _number("weighted_f1", ".4f")),
    Column("log loss", _number("log_loss", ".4f")),
    Column("macro AUC", _number("macro_auc", ".4f")),
    Column("params", _count("params")),
    Column("MACs/image", _count("macs")),
    Column("train s", _number("train_seconds", ".1f")),
    Column("images/s", _number("images_per_s", ",.0f")),
    Column("best epoch", lambda row: f"{row['best_epoch']}/{row['epochs']}"),
)


def rank(results: Sequence[VariantResult]) -> list[VariantResult]:
    """Best first. `sorted` is stable, so a full tie keeps the given order."""
    if not results:
        raise InputError("no variants to rank")
    return sorted(results, key=lambda r: (-r.accuracy, -r.macro_f1))


def pick_best(results: Sequence[VariantResult]) -> VariantResult:
    return rank(results)[0]


def leaderboard_rows(results: Sequence[VariantResult]) -> list[dict[str, Any]]:
    """Raw values per variant, best first: what the csv and json hold and the md and table format."""
    rows = []
    for position, result in enumerate(rank(results), start=1):
        metrics, summary = result.metrics, result.summary
        rows.append(
            {
                "rank": position,
                "model": result.name,
                "val_acc": metrics["accuracy"],
                # a folds run (engine/folds.py): out-of-fold accuracy over every training image, binomial SE
                "cv_acc": (summary.get("cv") or {}).get("accuracy"),
                "cv_se": (summary.get("cv") or {}).get("standard_error"),
                "macro_f1": metrics["f1_macro"],
                "weighted_f1": metrics["f1_weighted"],
                "log_loss": metrics["log_loss"],
                "macro_auc": metrics["roc_auc"]["macro"],
                "params": summary["params"],
                "macs": summary["macs"],  # multiply-accumulates per image
                "train_seconds": summary["train_seconds"],
                "images_per_s": summary["images_per_s"],
                "best_epoch": summary["best_epoch"],
                "epochs": summary["epochs"],
                "run_dir": str(result.run_dir),
            }
        )
    return rows


def render_markdown(rows: list[dict[str, Any]]) -> str:
    header = "| " + " | ".join(column.header for column in COLUMNS) + " |"
    rule = "| " + " | ".join("---:" if column.numeric else "---" for column in COLUMNS) + " |"
    body = ["| " + " | ".join(column.render(row) for column in COLUMNS) + " |" for row in rows]
    return "\n".join([header, rule, *body]) + "\n"


def render_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_leaderboard(parent_dir: str | Path, results: Sequence[VariantResult]) -> dict[str, Path]:
    """leaderboard.md, .csv and .json in the sweep directory, from the same rows. Returns {format: path}."""
    parent_dir = Path(parent_dir)
    rows = leaderboard_rows(results)
    return {
        "md": write_text(parent_dir / LEADERBOARD_FILES["md"], render_markdown(rows)),
        "csv": write_text(parent_dir / LEADERBOARD_FILES["csv"], render_csv(rows)),
        "json": write_json(
            parent_dir / LEADERBOARD_FILES["json"], {"sorted_by": SELECTION_RULE, "rows": rows}
        ),
    }


def write_best(parent_dir: str | Path, best: VariantResult) -> Path:
    """best.json: the hand-off to the export stage, which loads the run directory's best/ weights."""
    parent_dir = Path(parent_dir)
    payload = {
        "name": best.name,
        "model": best.summary["model"],
        "run_dir": os.path.relpath(Path(best.run_dir).resolve(), parent_dir.resolve()),
        "val_acc": best.accuracy,
        "macro_f1": best.macro_f1,
        "selected_by": SELECTION_RULE,
    }
    return write_json(parent_dir / BEST_FILE, payload)


def print_leaderboard(
    console: Console, results: Sequence[VariantResult], best: VariantResult | None = None
) -> None:
    """The leaderboard as a rich table; the chosen variant's row in bold green."""
    rows = leaderboard_rows(results)
    sizes = "/".join(str(n) for n in sorted({r.metrics["num_samples"] for r in results}))
    table = Table(title=f"Leaderboard ({sizes} validation images)")
    for column in COLUMNS:
        table.add_column(column.header, justify="right" if column.numeric else "left")
    for row in rows:
        style = "bold green" if best is not None and row["model"] == best.name else None
        table.add_row(*(Text(column.render(row)) for column in COLUMNS), style=style)  # Text: no markup
    console.print(table)
    if best is not None:
        console.print(Text.assemble("best: ", (best.name, "bold"), f" ({SELECTION_RULE})"))
