"""One self-contained report.html for a sweep (or a single run): tables and plots, nothing to fetch.

The file is meant to be mailed, attached to a CI run or opened from a copied folder, so it depends on
nothing beside it: the PNG plots are embedded as base64 data URIs, the CSS is inline, and there is no
JavaScript and no CDN. Every piece of text that comes from a run (names, class names, the export summary)
is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from fashiondist import __version__
from fashiondist.atomic_io import write_text
from fashiondist.engine.run_record import describe_run
from fashiondist.evaluation.leaderboard import COLUMNS, SELECTION_RULE, leaderboard_rows, rank
from fashiondist.evaluation.plots import PLOT_FILES
from fashiondist.evaluation.scores import VariantResult

REPORT_FILE = "report.html"
Section = tuple[str, str, str]  # (anchor id, heading, HTML content)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1400px; padding: 0 1rem; color: #1b1f24; background: #fff; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #d0d7de; padding-bottom: .2rem; margin-top: 2.5rem; }
.meta { color: #57606a; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; }
th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #dafbe1; font-weight: 600; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
.note { color: #9a6700; } .missing { color: #cf222e; }
nav a { margin-right: 1rem; }
"""


def write_html_report(
    parent_dir: str | Path,
    results: Sequence[VariantResult],
    best: VariantResult,
    extra: dict[str, Any] | None = None,
    comparison_plot: Path | None = None,
) -> Path:
    """Write `parent_dir/report.html` atomically and return its path.

    `extra` is the export/submission summary (any JSON-like mapping), shown in its own section when given;
    `comparison_plot` is the sweep's accuracy comparison PNG (absent for a single run). The variants'
    sections follow the leaderboard's order, best first.
    """
    parent_dir = Path(parent_dir)
    sections = [("leaderboard", "Leaderboard", _leaderboard_body(results, best))]
    if comparison_plot is not None:
        sections.append(
            ("comparison", "Validation accuracy of every variant", _img(comparison_plot, "comparison"))
        )
    if extra:
        sections.append(("export", "Export and submission", _key_value_table(extra)))
    run = describe_run(parent_dir)
    if run is not None:
        sections.append(("run", "How the run was made (run.json)", _key_value_table(run)))
    for index, result in enumerate(rank(results)):
        sections.append((f"variant-{index}", _variant_title(result), _variant_body(result)))
    title = f"fashiondist report: {parent_dir.resolve().name}"
    body = [_header(title, results, best, sections)]
    body += [_section(anchor, heading, content) for anchor, heading, content in sections]
    return write_text(parent_dir / REPORT_FILE, _page(title, body))


def _page(title: str, sections: list[str]) -> str:
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{escape(anchor)}">\n<h2>{escape(title)}</h2>\n{content}\n</section>'


def _header(
    title: str, results: Sequence[VariantResult], best: VariantResult, sections: list[Section]
) -> str:
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = " ".join(f'<a href="#{escape(anchor)}">{escape(heading)}</a>' for anchor, heading, _ in sections)
    return (
        f"<h1>{escape(title)}</h1>\n"
        f'<p class="meta">{len(results)} variant(s), generated {generated} by fashiondist {escape(__version__)}</p>\n'
        f"<p>Best: <strong>{escape(best.name)}</strong>, validation accuracy {best.accuracy:.2%}, "
        f"macro F1 {best.macro_f1:.4f} ({escape(SELECTION_RULE)}).</p>\n<nav>{nav}</nav>"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], best_row: int | None = None) -> str:
    """An escaped HTML table. The first column labels the row; the other columns hold values (right-aligned)."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    lines = [f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>"]
    for index, (label, *values) in enumerate(rows):
        cells = f"<td>{escape(str(label))}</td>" + "".join(
            f'<td class="num">{escape(str(v))}</td>' for v in values
        )
        attrs = ' class="best"' if index == best_row else ""
        lines.append(f"<tr{attrs}>{cells}</tr>")
    lines.append("</tbody>\n</table>")
    return "\n".join(lines)


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _img(path: Path, alt: str) -> str:
    """The PNG as a data URI, so the report needs no file beside it."""
    if not path.is_file():
        return f'<p class="missing">plot not found: {escape(path.name)}</p>'
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{escape(alt)}">'


def _leaderboard_body(results: Sequence[VariantResult], best: VariantResult) -> str:
    rows = leaderboard_rows(results)
    best_row = next(i for i, row in enumerate(rows) if row["model"] == best.name)
    table = _table([c.header for c in COLUMNS], [[c.render(row) for c in COLUMNS] for row in rows], best_row)
    return f"<p>Sorted by {escape(SELECTION_RULE)}.</p>\n{table}"


def _key_value_table(mapping: dict[str, Any]) -> str:
    return _table(["item", "value"], _flatten(mapping))


def _flatten(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested mappings as dotted keys; lists and other values as compact JSON text."""
    items: list[tuple[str, str]] = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append(
                (f"{prefix}{key}", value if isinstance(value, str) else json.dumps(value, default=str))
            )
    return items


def _variant_title(result: VariantResult) -> str:
    model = result.summary["model"]
    return result.name if result.name == model else f"{result.name} ({model})"


def _variant_body(result: VariantResult) -> str:
    metrics, run_dir = result.metrics, Path(result.run_dir)
    parts = [
        _summary_table(result),
        "<h3>Classification report</h3>",
        _classification_table(metrics),
        "<h3>Confusion matrix</h3>",
        _confusion_table(metrics),
        _img(run_dir / PLOT_FILES["confusion"], f"{result.name} confusion matrix"),
        "<h3>ROC AUC (one vs rest)</h3>",
        _auc_table(metrics),
        _img(run_dir / PLOT_FILES["roc"], f"{result.name} ROC curves"),
        "<h3>Training curves</h3>",
        '<div class="plots">'
        + _img(run_dir / PLOT_FILES["loss"], f"{result.name} loss")
        + _img(run_dir / PLOT_FILES["accuracy"], f"{result.name} accuracy")
        + "</div>",
    ]
    return "\n".join(parts)


def _summary_table(result: VariantResult) -> str:
    metrics, summary = result.metrics, result.summary
    rows = [
        ("run directory", str(result.run_dir)),
        ("validation images", metrics["num_samples"]),
        ("accuracy", _fmt(metrics["accuracy"], ".2%")),
        (
            "macro precision / recall / F1",
            " / ".join(_fmt(metrics[f"{m}_macro"]) for m in ("precision", "recall", "f1")),
        ),
        (
            "weighted precision / recall / F1",
            " / ".join(_fmt(metrics[f"{m}_weighted"]) for m in ("precision", "recall", "f1")),
        ),
        ("log loss", _fmt(metrics["log_loss"])),
        ("parameters", f"{summary['params']:,}" if summary["params"] is not None else "-"),
        ("MACs per image", f"{summary['macs']:,}" if summary["macs"] is not None else "-"),
        ("training seconds", _fmt(summary["train_seconds"], ".1f")),
        ("training images/s", _fmt(summary["images_per_s"], ",.0f")),
        ("best epoch / epochs", f"{summary['best_epoch']} / {summary['epochs']}"),
    ]
    return _table(["item", "value"], rows)


def _classification_table(metrics: dict[str, Any]) -> str:
    report = metrics["classification_report"]
    rows = []
    for key in [*metrics["class_names"], "macro avg", "weighted avg"]:
        entry = report[key]
        scores = [_fmt(entry[m]) for m in ("precision", "recall", "f1-score")]
        rows.append([key, *scores, int(entry["support"])])
    rows.append(["accuracy", "", "", _fmt(metrics["accuracy"]), metrics["num_samples"]])
    return _table(["class", "precision", "recall", "F1", "support"], rows)


def _confusion_table(metrics: dict[str, Any]) -> str:
    names = metrics["class_names"]
    rows = [[name, *counts] for name, counts in zip(names, metrics["confusion_matrix"], strict=True)]
    return _table(["true \\ predicted", *names], rows)


def _auc_table(metrics: dict[str, Any]) -> str:
    auc = metrics["roc_auc"]
    rows = [[name, _fmt(value)] for name, value in auc["per_class"].items()]
    rows += [["micro average", _fmt(auc["micro"])], ["macro average", _fmt(auc["macro"])]]
    note = f'<p class="note">{escape(auc["note"])}</p>' if auc["note"] else ""
    return _table(["class", "AUC"], rows) + note
