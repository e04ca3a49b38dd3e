"""One `train` at a time per run directory: a second one refuses with one line naming the holder's pid and
host; a lock left by a dead process is taken over, and the run says so. Real `fashiondist train` processes on
sample images."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fashiondist.cli import main
from fashiondist.engine.run_lock import LOCK_FILE, RunInUse, run_lock

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1"}
HOST = socket.gethostname()


def _command(
    options: list[str], out: Path, data: Path, epochs: int, launcher: list[str] | None = None
) -> list[str]:
    head = launcher or [sys.executable, "-m"]
    return [
        *head,
        "fashiondist",
        "train",
        *options,
        "--epochs",
        str(epochs),
        "--data",
        str(data),
        "--out",
        str(out),
    ]


def _wait_for_holder(out: Path, proc: subprocess.Popen) -> dict:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            holder = json.loads((out / LOCK_FILE).read_text())
            return holder
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"the first run never took the lock: {proc.communicate()[1][-2000:]}")


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _assert_refused(proc: subprocess.CompletedProcess, out: Path, holder_pid: int) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0] == (
        f"fashiondist: error: --out {out}: in use by process {holder_pid} on {HOST} (lock {out / LOCK_FILE}) "
        "(hint: wait for that run to end, or train into another --out)"
    )


def test_a_second_train_into_a_directory_in_use_refuses(tmp_path, tiny_csv, tiny_train):
    out = tmp_path / "run"
    first = subprocess.Popen(
        _command(tiny_train, out, tiny_csv, 500),
        env=ENV,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    holder = _wait_for_holder(out, first)
    assert (holder["pid"], holder["host"]) == (first.pid, HOST)
    second = subprocess.run(
        _command(tiny_train, out, tiny_csv, 1), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert first.poll() is None, "the first run was still training when the second started"
    _assert_refused(second, out, first.pid)
    first.send_signal(signal.SIGTERM)  # saves last/ and exits 0
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0 and "SIGTERM: saved" in err, err[-3000:]
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1)), "only the first run's epochs, in order"
    assert not (out / LOCK_FILE).exists(), "the lock goes with its run"


@pytest.mark.ddp
def test_every_rank_of_a_refused_ddp_run_exits(tmp_path, tiny_csv, tiny_train):
    """Only rank 0 locks; the other rank learns the refusal by broadcast instead of waiting in a collective."""
    out = tmp_path / "run"
    out.mkdir()
    with run_lock(out, log=print):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
        launch += [str(REPO / "launch/accelerate/cpu_ddp.yaml"), "--main_process_port", port, "-m"]
        proc = subprocess.run(
            _command(tiny_train, out, tiny_csv, 1, launch),
            env=ENV,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=240,
        )
    # The launcher prints its own report (and traceback) of a failed rank; fashiondist's code none.
    assert proc.returncode != 0 and "fashiondist/" not in proc.stderr, proc.stderr[-3000:]
    refusals = [line for line in proc.stderr.splitlines() if "fashiondist: error:" in line]
    assert refusals, proc.stderr[-3000:]  # each rank exits with it, none waits in a collective (no timeout)
    assert all(f"in use by process {os.getpid()} on {HOST}" in line for line in refusals)


def test_a_lock_left_by_a_dead_process_is_taken_over(
    tmp_path, tiny_csv, tiny_train, capsys, fresh_accelerate
):
    out = tmp_path / "run"
    out.mkdir()
    dead = _dead_pid()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead, "host": HOST, "started": 0}))
    assert main(["train", *tiny_train, "--epochs", "1", "--data", str(tiny_csv), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert (
        f"{out / LOCK_FILE}: took over the lock of process {dead} on {HOST}, which ended without releasing it"
        in err
    )
    assert not (out / LOCK_FILE).exists() and (out / "best/model.safetensors").is_file()


def test_the_lock_in_one_process(tmp_path):
    """flock is per open file: a second lock in this very process is refused too, and a refusal creates nothing."""
    out = tmp_path / "run"
    refused = pytest.raises(RunInUse, match=rf"in use by process {os.getpid()} on ")
    with run_lock(out, log=print), refused, run_lock(out, log=print):
        pass
    assert not out.exists(), "the directory the lock created, left empty, is removed"
    with run_lock(out, log=print):
        assert (out / LOCK_FILE).is_file()
