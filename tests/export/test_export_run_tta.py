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
from fashiondist.errors import FashiondistError
from fashiondist.export.agreement import ValidationRecord, compare_accuracy
from fashiondist.export.check_images import load_check_images
from fashiondist.export.exporter import REPORT_NAME, export_checkpoint

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
