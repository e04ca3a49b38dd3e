"""User text in plots is drawn literally, and `evaluate CHECKPOINT --data` leaves a whole report or none.

A class name holding matplotlib mathtext (`$\\notacommand{$`) once stopped `evaluate --data` with an 82-line
ParseFatalException after the predictions were written, leaving a partial directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fashiondist.cli import main
from fashiondist.data.sources import load_data
from fashiondist.evaluation.plots import PLOT_FILES
from fashiondist.models import create_model
from fashiondist.models.checkpoint import save_model

MATHTEXT = r"$\notacommand{$"  # an unknown command in an unclosed group: mathtext refuses to parse it


@pytest.fixture(scope="module")
def class_names() -> tuple[str, ...]:
    return load_data("sample").class_names


def _checkpoint(directory: Path, class_names: list[str]) -> Path:
    """A `cnn` checkpoint (untrained weights, seeded) whose model.json names the classes `class_names`."""
    torch.manual_seed(0)
    model = create_model("cnn", len(class_names)).eval()
    return save_model(directory, model, "cnn", {}, len(class_names), class_names)


def test_mathtext_in_class_and_run_names_is_drawn_literally(class_names, tmp_path: Path, capsys):
    names = [MATHTEXT, *class_names[1:]]
    checkpoint = _checkpoint(tmp_path / "best", names)
    out = tmp_path / f"eval {MATHTEXT}"  # the run's name, in every plot title, is user text too
    assert main(["evaluate", str(checkpoint), "--data", "sample", "--out", str(out)]) == 0
    capsys.readouterr()
    for plot in PLOT_FILES.values():
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    assert json.loads((out / "evaluation.json").read_text())["metrics"]["class_names"][0] == MATHTEXT


def test_a_failed_evaluate_leaves_no_partial_directory(class_names, tmp_path: Path, capsys):
    """Duplicate class names are refused by the report, after the predictions were written."""
    checkpoint = _checkpoint(tmp_path / "best", [class_names[0], *class_names[:-1]])
    out = tmp_path / "eval"
    assert main(["evaluate", str(checkpoint), "--data", "sample", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fashiondist: error: ") and err.count("\n") == 1
    assert "class names must be unique" in err
    assert not out.exists()
