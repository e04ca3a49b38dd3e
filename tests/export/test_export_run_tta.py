"""`fashiondist export RUN` ships what the run measured: the run's TTA by default, and the ONNX model's
validation accuracy beside the run's, refused when they disagree (fashiondist/export/agreement.py).

One real `fashiondist train` run (cnn, 1 epoch on the bundled sample, flip TTA, precision auto: bf16 on a
CPU with native bf16, fp32 elsewhere), trained once in a child process for the module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fashiondist.cli import main
from fashiondist.config import Tta
from fashiondist.errors import FashiondistError
from fashiondist.export.agreement import TIE_FACTOR, ValidationRecord, compare_accuracy, margin_error
from fashiondist.export.check_images import load_check_images
from fashiondist.export.exporter import REPORT_NAME, _autocast_error, export_checkpoint
from fashiondist.models.checkpoint import load_model

# Numerics-sensitive: CI runs this module again under AVX-512 (no AMX) and AVX2 kernel holds (.ci/run).
pytestmark = pytest.mark.numerics

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def flip_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("flip") / "run"
    cmd = [sys.executable, "-m", "fashiondist", "train", "--model", "cnn", "--epochs", "1", "--tta", "flip"]
    cmd += ["--quiet", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_export_without_tta_reproduces_the_runs_validation_accuracy(
    flip_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "model.onnx"
    assert main(["export", str(flip_run), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    report = json.loads((tmp_path / REPORT_NAME).read_text())
    summary = json.loads((flip_run / "summary.json").read_text())
    assert report["tta"] == "flip" and report["metadata"]["tta"] == "flip"
    accuracy = report["accuracy"]
    assert accuracy["rule"] == "per image" and accuracy["agrees"] is True
    assert accuracy["images"] == summary["val_count"]
    assert accuracy["run_accuracy"] == summary["best_val_acc"]
    # only argmax ties of the run's own arithmetic may be predicted differently, so the counts match up to them
    assert accuracy["ties"] == accuracy["differing"] <= 0.01 * accuracy["images"]
    assert abs(accuracy["onnx_correct"] - accuracy["run_correct"]) <= accuracy["ties"]
    assert (
        f"ONNX {accuracy['onnx_accuracy']:.2%}" in stdout
        and f"the run {summary['best_val_acc']:.2%}" in stdout
    )
    assert ": agree (" in stdout


def test_another_tta_reports_both_accuracies_without_a_verdict(flip_run: Path, tmp_path: Path):
    out = tmp_path / "model.onnx"
    assert main(["export", str(flip_run), "--out", str(out), "--tta", "none"]) == 0
    accuracy = json.loads((tmp_path / REPORT_NAME).read_text())["accuracy"]
    assert accuracy["agrees"] is None and "the run measured tta flip" in accuracy["rule"]


def test_an_export_that_drops_the_runs_tta_is_refused(flip_run: Path, tmp_path: Path):
    """A checkpoint whose record lost its TTA (model.json says none) exports without flip: the run's saved
    predictions (made with flip) then differ beyond argmax ties, and nothing is written."""
    run = tmp_path / "run"
    shutil.copytree(flip_run, run)
    meta_path = run / "best" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["tta"] = "none"
    meta_path.write_text(json.dumps(meta))
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("tta: flip", "tta: none"))
    checks = load_check_images("sample", run)
    out = tmp_path / "model.onnx"
    with pytest.raises(FashiondistError, match="does not reproduce the run's validation accuracy"):
        export_checkpoint(run, out, images=checks.images, labels=checks.labels)
    assert not out.exists() and not (tmp_path / REPORT_NAME).exists()


def test_by_count_without_saved_predictions():
    """A bare checkpoint has only its recorded accuracy: the counts may differ by the ONNX model's ties."""
    labels = np.array([0, 1, 1, 0])
    probs = np.array(  # image 2: a near tie between classes 0 and 1 (logit range ~13, margin 4e-4)
        [[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.5 + 1e-4, 0.5 - 1e-4, 1e-6], [0.3, 0.7, 0.0]], dtype=np.float32
    )
    record = ValidationRecord(
        val_accuracy=0.5, tta="none", precision="bf16"
    )  # 2 of 4 correct; ONNX has 2 too
    assert compare_accuracy(probs, labels, record, "none").agrees is True
    one_tie = ValidationRecord(
        val_accuracy=0.75, tta="none", precision="bf16"
    )  # 3 of 4: image 2 is a near tie
    verdict = compare_accuracy(probs, labels, one_tie, "none")
    assert verdict.rule == "by count" and verdict.ties == 1 and verdict.agrees is True
    far = ValidationRecord(val_accuracy=1.0, tta="none", precision="bf16")  # image 3 is no tie: 0.3 vs 0.7
    assert compare_accuracy(probs, labels, far, "none").agrees is False


def _softmax(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_margin_error_is_the_largest_margin_move_relative_to_the_logit_range():
    z = np.array([[0.0, 1.0, 4.0], [2.0, 0.0, 0.5]])
    assert margin_error(_softmax(z), _softmax(z + 3.0)) == pytest.approx(0.0, abs=1e-12)  # no margin moves
    moved = z + np.array([[0.1, 0.0, 0.0], [0.0, 0.05, 0.0]])
    # image 0: argmax 2 against class 0 moves by 0.1 of range 4; image 1: 0.05 of range 2
    assert margin_error(_softmax(z), _softmax(moved)) == pytest.approx(0.1 / 4.0)


def test_a_flip_inside_the_models_measured_rounding_is_a_tie(tmp_path: Path):
    """bf16 moved a label-smoothed model's margins by far more than TIE_FACTOR x u x range (26 u, measured on
    three Fashion-MNIST convnets): a flip inside twice the measured error is a tie, one outside is not."""
    u, spread = 2.0**-8, 4.0
    margin = 20 * u * spread  # the run's argmax 0 beat class 1 by 20 u x range: beyond the floor of 8 u
    run = _softmax([[margin, 0.0, -spread + margin], [spread, 0.0, 1.0]])
    onnx = _softmax([[0.0, margin, -spread + margin], [spread, 0.0, 1.0]])
    labels = np.array([0, 0])
    np.savez(tmp_path / "val.npz", y_true=labels, probs=run)
    record = ValidationRecord(1.0, "none", "bf16", tmp_path / "val.npz")
    assert TIE_FACTOR < 20 and compare_accuracy(onnx, labels, record, "none").agrees is False
    tie = compare_accuracy(onnx, labels, record, "none", measured_rtol=11 * u)  # 2 x 11 u covers 20 u
    assert tie.agrees is True and tie.ties == 1 and "measured bf16 error, 11.0 x" in tie.tie_margin
    assert compare_accuracy(onnx, labels, record, "none", measured_rtol=9 * u).agrees is False


def test_the_runs_rounding_is_measured_on_the_model_itself(flip_run: Path):
    model, _ = load_model(flip_run)
    images = load_check_images("sample", flip_run).images[:200]
    bf16 = _autocast_error(model, images, Tta.FLIP, ValidationRecord(0.5, "flip", "bf16"))
    assert 0.0 < bf16 < 64 * 2.0**-8  # bf16 moves some margin, by a few roundoffs of the range
    assert _autocast_error(model, images, Tta.FLIP, ValidationRecord(0.5, "flip", "no")) == 0.0  # float32
    assert (
        _autocast_error(model, images, Tta.NONE, ValidationRecord(0.5, "flip", "bf16")) == 0.0
    )  # no verdict
