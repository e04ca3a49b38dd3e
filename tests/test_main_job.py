"""The main job end to end on the bundled sample: train two variants, select, export (and int8), submit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from fashiondist.cli import main
from fashiondist.data.csvio import read_competition_csv

SAMPLE_TEST = Path(__file__).resolve().parents[1] / "fashiondist/data/sample/testX.csv.gz"


def _submission(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)  # [N, 2]: Id, Label


def _best_by_predictions(out: Path, names: tuple[str, ...]) -> str:
    """The selection rule worked out from each variant's saved predictions with scikit-learn: the highest
    validation accuracy, ties broken by macro F1 (evaluation/leaderboard.py ranks the same way)."""
    from sklearn.metrics import accuracy_score, f1_score

    def score(name: str) -> tuple[float, float]:
        with np.load(out / name / "val_predictions.npz", allow_pickle=False) as saved:
            y, pred = saved["y_true"], saved["probs"].argmax(1)
        return accuracy_score(y, pred), f1_score(y, pred, average="macro", zero_division=0)

    return max(names, key=score)


def test_models_test_quantize_ship_the_best_and_submit_with_the_model_that_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "sweep"
    argv = ["train", "--models", "cnn,convnet", "--epochs", "2", "--out", str(out), "--quiet"]
    assert main([*argv, "--test", str(SAMPLE_TEST), "--quantize", "int8"]) == 0
    stdout = capsys.readouterr().out

    best = json.loads((out / "best.json").read_text())
    assert best["model"] == _best_by_predictions(out, ("cnn", "convnet"))
    report = json.loads((out / "export_report.json").read_text())
    assert report["model"] == best["model"] and report["parity_passed"] is True
    int8 = report["int8"]
    assert int8 is not None and int8["calibration_images"] > 0
    # the int8 model serves when the accuracy gate kept it and the CPU has VNNI/AMX; otherwise the float
    # model does, and we say why
    from fashiondist.inference.choice import int8_flags

    serving = out / ("model.int8.onnx" if int8["accepted"] and int8_flags() else "model.onnx")
    assert (out / "model.int8.onnx").is_file() == int8["accepted"]
    assert f"submission: {out / 'submission.csv'} (1,000 rows, {serving.name})" in stdout
    if not int8["accepted"]:
        assert "int8 model: int8 model refused" in stdout

    # run.json: one for the multi-model run, one per variant, all on the same data; the model names both
    parent = json.loads((out / "run.json").read_text())
    assert parent["status"] == "finished" and list(parent["variants"]) == ["cnn", "convnet"]
    assert parent["result"]["best"] == best["model"]
    for name in ("cnn", "convnet"):
        variant = json.loads((out / name / "run.json").read_text())
        assert variant["status"] == "finished" and variant["config"]["model"] == name
        assert variant["data"] == parent["data"] and variant["data"]["source"] == "sample"
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert props["data_sha256"] == parent["data"]["sha256"]
    html = (out / "report.html").read_text()  # written after the record was completed, so it says so
    assert f"{parent['finished']} (finished)" in html and "(running)" not in html

    submitted = _submission(out / "submission.csv")
    np.testing.assert_array_equal(submitted[:, 0], read_competition_csv(SAMPLE_TEST).ids)  # input order
    again = tmp_path / "again.csv"
    assert main(["infer", str(SAMPLE_TEST), "--model", str(serving), "--out", str(again)]) == 0
    np.testing.assert_array_equal(_submission(again), submitted)  # the serving model wrote it


def test_quantize_needs_models_or_test(capsys: pytest.CaptureFixture[str]):
    assert main(["train", "--model", "cnn", "--quantize", "int8"]) == 2
    assert capsys.readouterr().err.strip() == (
        "fashiondist: error: --quantize needs --models or --test "
        "(for one run alone, use `fashiondist export RUN --quantize int8`)"
    )


def test_model_with_test_trains_exports_and_submits_from_its_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """`--model X --test T` ships like `--models X --test T`, into X's own run directory (its --out)."""
    run = tmp_path / "convnet"
    argv = ["train", "--model", "convnet", "--epochs", "1", "--out", str(run), "--quiet"]
    assert main([*argv, "--set", "model_kwargs.width=0.5", "--test", str(SAMPLE_TEST)]) == 0
    stdout = capsys.readouterr().out

    assert json.loads((run / "best.json").read_text())["model"] == "convnet"
    report = json.loads((run / "export_report.json").read_text())
    assert report["model"] == "convnet" and report["parity_passed"] is True
    assert report["accuracy"]["agrees"] is True  # the shipped file scores what the run reported
    assert f"submission: {run / 'submission.csv'} (1,000 rows, model.onnx)" in stdout
    submitted = _submission(run / "submission.csv")
    np.testing.assert_array_equal(submitted[:, 0], read_competition_csv(SAMPLE_TEST).ids)
    again = tmp_path / "again.csv"
    assert main(["infer", str(SAMPLE_TEST), "--model", str(run / "model.onnx"), "--out", str(again)]) == 0
    np.testing.assert_array_equal(_submission(again), submitted)
    assert (run / "summary.json").is_file() and (run / "best" / "model.safetensors").is_file()
    # the variant's own record, not a multi-model parent's written over it
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["variants"] is None, record["variants"]
    assert record["result"]["best_val_acc"] == json.loads((run / "summary.json").read_text())["best_val_acc"]
