"""loss.png's legend names the loss both curves show (metrics.jsonl's `loss`), so nobody compares a smoothed
training loss with a plain validation loss by mistake."""

from __future__ import annotations

from fashiondist.evaluation.plots import curves_figure


def _history(loss: str | None) -> list[dict]:
    rows = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_acc": 0.5, "val_acc": 0.6}
        for e in (1, 2)
    ]
    if loss is not None:
        for row in rows:
            row["loss"] = loss
    return rows


def test_the_legend_says_which_loss():
    fig = curves_figure(_history("cross-entropy, label smoothing 0.1"), "loss", "cnn")
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert labels == [
        "train (cross-entropy, label smoothing 0.1)",
        "val (cross-entropy, label smoothing 0.1)",
    ]


def test_older_runs_and_accuracy_keep_plain_labels():
    for history, metric in ((_history(None), "loss"), (_history("cross-entropy, label smoothing 0"), "acc")):
        fig = curves_figure(history, metric, "cnn")
        assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["train", "val"]
