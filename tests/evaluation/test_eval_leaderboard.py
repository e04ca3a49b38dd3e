"""The sweep's choice (best.json) is the leaderboard's argmax; the md, csv and json files agree."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from rich.console import Console
from sklearn import metrics as skm

from fashiondist.errors import InputError
from fashiondist.evaluation.leaderboard import pick_best
from fashiondist.evaluation.sweep import report_sweep


def _independent_scores(sweep) -> dict[str, tuple[float, float]]:
    """(accuracy, macro F1) per run, recomputed here with scikit-learn from each saved .npz."""
    scores = {}
    for run_dir in sweep["runs"]:
        with np.load(run_dir / "val_predictions.npz", allow_pickle=False) as arrays:
            y, pred = arrays["y_true"], arrays["probs"].argmax(axis=1)
        scores[run_dir.name] = (skm.accuracy_score(y, pred), skm.f1_score(y, pred, average="macro"))
    return scores


def test_best_json_is_the_argmax_with_the_tie_broken_by_macro_f1(sweep):
    scores = _independent_scores(sweep)
    assert scores["tie-a"][0] == scores["tie-b"][0], "the pair must tie on accuracy"
    assert scores["tie-b"][1] > scores["tie-a"][1]
    assert max(scores, key=lambda name: scores[name][0]) == "tie-a", "accuracy alone would pick tie-a"
    expected = max(scores, key=lambda name: scores[name])  # (accuracy, macro F1) lexicographic

    best = json.loads((sweep["parent"] / "best.json").read_text())
    assert best["name"] == expected == "tie-b" == sweep["best"].name
    assert best["model"] == "resnet9"
    assert best["run_dir"] == "tie-b"
    assert (sweep["parent"] / best["run_dir"] / "val_predictions.npz").is_file()
    # float64 ratios of integer counts, computed two ways (a few roundings per class, K <= 10): <= 1e-12 relative
    assert (best["val_acc"], best["macro_f1"]) == pytest.approx(scores["tie-b"], rel=1e-12)


def test_md_csv_and_json_hold_the_same_rows_in_rank_order(sweep):
    parent = sweep["parent"]
    rows = json.loads((parent / "leaderboard.json").read_text())["rows"]
    with (parent / "leaderboard.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    md_lines = (parent / "leaderboard.md").read_text().splitlines()
    md_cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in md_lines[2:]]

    scores = _independent_scores(sweep)
    order = sorted(scores, key=lambda name: scores[name], reverse=True)
    assert [row["model"] for row in rows] == order
    assert [row["model"] for row in csv_rows] == order
    assert [cells[0] for cells in md_cells] == order
    assert [row["rank"] for row in rows] == list(range(1, len(order) + 1))
    for row, csv_row, cells in zip(rows, csv_rows, md_cells, strict=True):
        assert row["val_acc"] == pytest.approx(scores[row["model"]][0], rel=1e-12)  # as above: count ratios
        for key in ("val_acc", "macro_f1", "weighted_f1", "log_loss", "macro_auc", "train_seconds"):
            assert float(csv_row[key]) == row[key]
        assert int(csv_row["params"]) == row["params"] and int(csv_row["macs"]) == row["macs"]
        assert cells[1] == f"{row['val_acc']:.2%}" and cells[2] == f"{row['macro_f1']:.4f}"
        assert cells[-1] == f"{row['best_epoch']}/{row['epochs']}"


def test_the_rich_leaderboard_names_every_variant_and_the_best(sweep):
    out = sweep["stdout"]
    for run_dir in sweep["runs"]:
        assert run_dir.name in out
    assert "best: tie-b" in out
    assert "report: " in out and "report.html" in out


def test_nothing_to_rank_is_an_input_error_and_writes_nothing(tmp_path):
    with pytest.raises(InputError, match="no variants"):
        pick_best([])
    with pytest.raises(InputError, match="no run directories"):
        report_sweep(tmp_path, [], Console(file=io.StringIO()))
    assert not list(tmp_path.iterdir())
