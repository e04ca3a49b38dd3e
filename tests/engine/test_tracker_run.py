"""`--log-with tensorboard` (no network): the tracker run's id is saved in last/ and a resumed run logs into
that same tracker run (issue 20, item 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorboard", reason="pip install -e '.[dev]' brings tensorboard")

REPO = Path(__file__).resolve().parents[2]


def _train(tiny_train, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fashiondist", "train", *tiny_train, "--data", str(data), "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--log-with", "tensorboard", *extra],
        capture_output=True, text=True, timeout=240, cwd=REPO, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _tracker_run(out: Path) -> str:
    return json.loads((out / "last" / "trainer_state.json").read_text())["tracker_run"]


@pytest.mark.slow
def test_resumed_run_logs_into_the_tracker_run_it_started(tiny_train, tiny_csv, tmp_path):
    out = tmp_path / "run"
    _train(tiny_train, tiny_csv, out, "--epochs", "1")
    first = _tracker_run(out)
    _train(tiny_train, tiny_csv, out, "--epochs", "2", "--resume", "auto")
    assert _tracker_run(out) == first
    # one TensorBoard run directory (the variant's; its hparams go to sub-directories), each start's event
    # file named with the same id
    events = sorted(p.name for p in (out / "cnn").glob("events.out.tfevents.*"))
    assert len(events) == 2, events
    assert all(name.endswith(f".{first}") for name in events), events
