"""`fashiondist infer` on real images: the submission agrees with PyTorch, row for row, in input order."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fashiondist.cli import main
from fashiondist.data.csvio import write_competition_csv
from fashiondist.data.sources import load_data, sample_test_labels
from fashiondist.export.parity import parity_verdict
from fashiondist.inference import open_session, predict_proba
from fashiondist.models.checkpoint import load_model

# Numerics-sensitive: CI runs this module again under AVX-512 (no AMX) and AVX2 kernel holds (.ci/run).
pytestmark = pytest.mark.numerics

REPO = Path(__file__).resolve().parents[2]


def _read_submission(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=np.float64)


def test_infer_matches_pytorch_in_input_order(
    onnx_model: Path,
    model_dir: Path,
    sample_test_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    out = tmp_path / "submission.csv"
    assert main(["infer", str(sample_test_csv), "--model", str(onnx_model), "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout.startswith(f"wrote {out}: 1,000 rows in ") and stdout.count("\n") == 1  # one summary line
    assert "ran on CPUExecutionProvider" in stderr  # which provider ran, on stderr

    header, rows = _read_submission(out)
    test = load_data("sample", split="test")
    assert header == ["Id", "Label"]
    np.testing.assert_array_equal(rows[:, 0], test.ids)  # every row, in input order
    model, _ = load_model(model_dir)
    with torch.no_grad():
        expected = model(torch.from_numpy(test.images).unsqueeze(1)).argmax(1).numpy()
    np.testing.assert_array_equal(rows[:, 1], expected)  # 100% agreement with PyTorch
    assert np.mean(rows[:, 1] == sample_test_labels()) > 0.7  # and a real classifier on the hidden labels
    assert out.read_text().splitlines()[1].count(".") == 0  # integer labels


def test_infer_probs_columns(onnx_model: Path, sample_test_csv: Path, tmp_path: Path):
    out = tmp_path / "probs.csv"
    code = main(["infer", str(sample_test_csv), "--model", str(onnx_model), "--out", str(out), "--probs"])
    assert code == 0
    header, rows = _read_submission(out)
    assert header == ["Id", "Label"] + [f"prob_{k}" for k in range(10)]
    probs = rows[:, 2:]
    expected = predict_proba(open_session(onnx_model, "cpu"), load_data("sample", split="test").images)
    # The CSV keeps 6 significant digits (log p off by <= 5e-6 per class, implied logits by <= 1e-5 =
    # PARITY_TOLERANCE.logit_atol) and the CLI batches otherwise: the export's own parity rule bounds both.
    assert parity_verdict(expected.astype(np.float64), probs, batch_size=len(probs)).passed
    np.testing.assert_array_equal(rows[:, 1], probs.argmax(1))


def test_labelled_csv_reports_accuracy(onnx_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    train = load_data("sample", split="train")
    labelled = tmp_path / "train.csv"
    write_competition_csv(labelled, train.ids[:300], train.images[:300], train.labels[:300])
    assert main(["infer", str(labelled), "--model", str(onnx_model), "--out", str(tmp_path / "s.csv")]) == 0
    assert "on its labels" in capsys.readouterr().out


def test_explicit_gpu_provider_fails_loudly_without_it(
    onnx_model: Path, sample_test_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """A provider this machine lacks is a bad option value: exit 2 (it was 1), one line, output untouched."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    out = tmp_path / "submission.csv"
    out.write_bytes(b"Id,Label\n1,2\n")  # a good earlier submission
    code = main(
        ["infer", str(sample_test_csv), "--model", str(onnx_model), "--out", str(out), "--provider", "cuda"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "fashiondist: error: --provider cuda: this onnxruntime has no CUDAExecutionProvider (it has "
    )
    assert err.count("\n") == 1 and out.read_bytes() == b"Id,Label\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_infer_never_imports_torch(onnx_model: Path, sample_test_csv: Path, tmp_path: Path):
    """The whole command, parser of every command group included, runs without importing torch."""
    out = tmp_path / "submission.csv"
    script = (
        "import sys; from fashiondist.cli import main; "
        f"rc = main(['infer', {str(sample_test_csv)!r}, '--model', {str(onnx_model)!r}, '--out', {str(out)!r}]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'accelerate'))); "
        "sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert out.is_file()
