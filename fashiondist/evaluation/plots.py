"""PNG plots of a variant (loss, accuracy, confusion matrix, ROC) and one comparison plot of a sweep.

Figures are built with matplotlib's object API (`matplotlib.figure.Figure`) and never through pyplot:
saving a standalone Figure renders with the Agg canvas whatever the session's backend is, so no display
is needed, the caller's own backend is left untouched (no `matplotlib.use` side effect on import), and
no global figure registry exists that could leak figures. A figure is released when it goes out of scope.

Text a user chose (variant names, class names) is drawn literally: `_literal` escapes the `$` that would
start matplotlib's mathtext, so `$\\notacommand{$` is a label, not a parse error that stops the report.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fashiondist.atomic_io import write_bytes
from fashiondist.evaluation.scores import VariantResult
from fashiondist.run_layout import load_predictions

PLOT_FILES = {
    "loss": "loss.png",
    "accuracy": "accuracy.png",
    "confusion": "confusion_matrix.png",
    "roc": "roc.png",
}
COMPARISON_FILE = "val_accuracy.png"
METRIC_WORDS = {"loss": "loss", "acc": "accuracy"}  # history column suffix -> what a title calls it
DPI = 100  # pixels per inch: a 7-inch-wide figure is 700 px, sharp enough for the report, small to embed


def write_variant_plots(result: VariantResult) -> dict[str, Path]:
    """The four per-variant plots, into the variant's run directory. Returns {kind: path}."""
    y_true, probs = load_predictions(result.run_dir)
    figures = {
        "loss": curves_figure(result.history, "loss", result.name),
        "accuracy": curves_figure(result.history, "acc", result.name),
        "confusion": confusion_figure(result.metrics, result.name),
        "roc": roc_figure(y_true, probs, result.metrics, result.name),
    }
    return {kind: save_png(fig, Path(result.run_dir) / PLOT_FILES[kind]) for kind, fig in figures.items()}


def write_comparison_plot(parent_dir: Path, results: Sequence[VariantResult]) -> Path:
    """Every variant's validation accuracy per epoch and per second of training, into the sweep dir."""
    return save_png(comparison_figure(results), Path(parent_dir) / COMPARISON_FILE)


def save_png(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    # zlib level 1: a third faster than the default 6 for about 6% more bytes on these flat-colour plots
    fig.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    return write_bytes(path, buffer.getvalue())


def _literal(text: str) -> str:
    """`text` as matplotlib draws it, character for character: `$` escaped so no mathtext is parsed."""
    return str(text).replace("$", r"\$")


def _series(history: list[dict[str, Any]], key: str) -> np.ndarray:
    """A history column as floats; an epoch that lacks the value (e.g. no train accuracy) is a gap (NaN)."""
    return np.array([np.nan if row.get(key) is None else row[key] for row in history], dtype=np.float64)


def curves_figure(history: list[dict[str, Any]], metric: str, name: str) -> Figure:
    """`train_<metric>` and `val_<metric>` of variant `name` against the epoch number."""
    title = f"{_literal(name)}: {METRIC_WORDS.get(metric, metric)} per epoch"
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    epochs = _series(history, "epoch")
    # which loss both curves are (metrics.jsonl's "loss", e.g. "cross-entropy, label smoothing 0.1")
    what = history[-1].get("loss") if metric == "loss" and history else None
    for split in ("train", "val"):
        label = f"{split} ({_literal(what)})" if what else split
        ax.plot(epochs, _series(history, f"{split}_{metric}"), marker="o", markersize=3, label=label)
    ax.set(title=title, xlabel="epoch", ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def confusion_figure(metrics: dict[str, Any], name: str) -> Figure:
    """Counts and row-normalised rates side by side: counts show the volume, rates each class's recall."""
    counts = np.asarray(metrics["confusion_matrix"], dtype=np.float64)  # [K true, K predicted]
    support = counts.sum(axis=1, keepdims=True)  # [K, 1]
    rates = np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)  # absent class: row of 0
    side = 0.45 * counts.shape[0] + 2  # inches per panel (6.5 for 10 classes), grows with the class count
    fig = Figure(figsize=(2 * side, side), layout="constrained")
    left, right = fig.subplots(1, 2)
    class_names = [_literal(c) for c in metrics["class_names"]]
    _matrix_panel(left, counts, class_names, "counts", "{:.0f}")
    _matrix_panel(right, rates, class_names, "row-normalised (recall on the diagonal)", "{:.2f}")
    fig.suptitle(f"{_literal(name)}: confusion matrix ({metrics['num_samples']} validation images)")
    return fig


def _matrix_panel(ax: Axes, values: np.ndarray, class_names: list[str], title: str, fmt: str) -> None:
    ax.imshow(values, cmap="Blues", vmin=0)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    dark = values.max() / 2  # white text on the darker half of the colour map
    for (i, j), value in np.ndenumerate(values):
        colour = "white" if value > dark else "black"
        # in_layout=False: the cells sit inside the axes, so the layout engine need not measure K*K texts
        ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=8, color=colour, in_layout=False)


def roc_figure(y_true: np.ndarray, probs: np.ndarray, metrics: dict[str, Any], name: str) -> Figure:
    """One-vs-rest ROC per class, micro and macro curves; legend AUCs are the report's numbers."""
    from sklearn.metrics import roc_curve

    auc = metrics["roc_auc"]
    onehot = y_true[:, None] == np.arange(probs.shape[1])[None, :]  # [M, K] bool
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    class_curves = []
    for k, class_name in enumerate(metrics["class_names"]):
        if auc["per_class"][class_name] is None:
            continue  # no positives or no negatives: no curve (the report's note says so)
        fpr, tpr, _ = roc_curve(onehot[:, k], probs[:, k])
        class_curves.append((fpr, tpr))
        label = f"{_literal(class_name)} ({auc['per_class'][class_name]:.4f})"
        ax.plot(fpr, tpr, linewidth=1, alpha=0.7, label=label)
    fpr, tpr, _ = roc_curve(onehot.ravel(), probs.ravel())  # [M*K] pooled
    ax.plot(fpr, tpr, "k--", linewidth=2, label=f"micro-average ({auc['micro']:.4f})")
    if class_curves:
        grid = np.unique(np.concatenate([fpr for fpr, _ in class_curves]))
        mean_tpr = np.mean([np.interp(grid, fpr, tpr) for fpr, tpr in class_curves], axis=0)
        ax.plot(grid, mean_tpr, "k:", linewidth=2, label=f"macro-average ({auc['macro']:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    ax.set(
        title=f"{_literal(name)}: ROC, one vs rest (AUC)",
        xlabel="false positive rate",
        ylabel="true positive rate",
    )
    ax.legend(loc="lower right", fontsize=8)
    return fig


def comparison_figure(results: Sequence[VariantResult]) -> Figure:
    """Validation accuracy by epoch (sample efficiency) and by elapsed seconds (time efficiency)."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    by_epoch, by_time = fig.subplots(1, 2, sharey=True)
    for result in results:
        val_acc = _series(result.history, "val_acc")
        label = _literal(result.name)
        by_epoch.plot(_series(result.history, "epoch"), val_acc, marker="o", markersize=3, label=label)
        by_time.plot(
            _series(result.history, "elapsed_seconds"), val_acc, marker="o", markersize=3, label=label
        )
    by_epoch.set(title="validation accuracy per epoch", xlabel="epoch", ylabel="val accuracy")
    by_time.set(title="validation accuracy over training time", xlabel="elapsed seconds")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    by_time.legend(fontsize=8)
    return fig
