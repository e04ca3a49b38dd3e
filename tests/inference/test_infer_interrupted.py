"""`fashiondist infer` stopped mid-run: SIGTERM leaves the earlier submission and no temp file; kill -9
leaves a temp file that the next run writing there sweeps. Both once left `.S.csv.<pid>.tmp` for good.

The child is the real command; it signals itself after its first chunk is written to the temp file, so the
signal lands mid-write every time, not when a timer happens to fire.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fashiondist.cli import main

GOOD = b"Id,Label\n1,2\n"  # an earlier submission

INFER_THEN_SIGNAL = """
import os, signal, sys
import fashiondist.inference.job as run
real = run.predict_csv

def predict_csv(*args, **kwargs):
    for chunk in real(*args, **kwargs):
        yield chunk  # infer writes it into the temp file, then asks for the next one
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))

run.predict_csv = predict_csv
from fashiondist.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _infer_and_signal(signame: str, csv_path: Path, model: Path, out: Path) -> subprocess.CompletedProcess:
    command = ["infer", str(csv_path), "--model", str(model), "--out", str(out), "--provider", "cpu"]
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(INFER_THEN_SIGNAL), signame, *command],
        capture_output=True,
        timeout=120,
    )


def _temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_sigterm_mid_infer_leaves_the_old_submission_and_no_temp(
    onnx_model: Path, sample_test_csv: Path, tmp_path: Path
):
    out = tmp_path / "submission.csv"
    out.write_bytes(GOOD)
    done = _infer_and_signal("SIGTERM", sample_test_csv, onnx_model, out)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr.decode()
    assert out.read_bytes() == GOOD
    assert _temp_files(tmp_path) == []


def test_kill_9_mid_infer_leaves_a_temp_that_the_next_run_sweeps(
    onnx_model: Path, sample_test_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "submission.csv"
    out.write_bytes(GOOD)
    done = _infer_and_signal("SIGKILL", sample_test_csv, onnx_model, out)
    assert done.returncode == -signal.SIGKILL
    assert out.read_bytes() == GOOD
    (orphan,) = _temp_files(tmp_path)
    assert orphan.startswith(".submission.csv.")
    assert main(["infer", str(sample_test_csv), "--model", str(onnx_model), "--out", str(out)]) == 0
    assert _temp_files(tmp_path) == []
    assert out.read_text().count("\n") == 1 + 1000  # header + the sample's 1,000 test rows
    capsys.readouterr()
