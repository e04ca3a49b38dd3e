"""Helpers for the tests that launch real multi-process training on this host (gloo on the CPU): free
ports, a small real data set, bounded waits, and processes always reaped (a test that fails must not leave
ranks training on a 2-core CI machine)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
# 1-thread ranks: two ranks on two cores, and the same arithmetic in every process and every launcher.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("FASHIONDIST_PREEMPT_SIGNAL", None)
ENV.pop("TORCHELASTIC_RESTART_COUNT", None)
# fp32 (auto would pick bf16 on a CPU with avx512_bf16): the tests compare weights across launchers.
TINY = [
    "--model",
    "cnn",
    "--batch-size",
    "64",
    "--precision",
    "no",
    "--quiet",
    "--set",
    "eval_batch_size=256",
]
TIMEOUT = 240  # seconds for one launch of a few seconds' training: generous for a loaded 2-core machine


def run_ok(cmd: list[str], timeout: float = 280) -> subprocess.CompletedProcess:
    """Run `cmd` (a fashiondist command line, under a launcher or not) from the repo with ENV, to its end;
    assert it exited 0 (else show its output's tail) and return it."""
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def learned_parameters(run: Path) -> dict:
    """A run's best/ learned tensors, without BatchNorm's running statistics (they move whatever the learning
    rate): what tests compare between runs."""
    weights = load_file(str(run / "best" / "model.safetensors"))
    return {
        k: v for k, v in weights.items() if not k.endswith(("running_mean", "running_var", "batches_tracked"))
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *args]


def multi_node_node(rank: int, port: str, *train_args: str) -> list[str]:
    """Node `rank` of the repo's 2-node CPU config meeting at 127.0.0.1:`port`, running `fashiondist ARGS`."""
    config = str(LAUNCH / "accelerate" / "cpu_multi_node.yaml")
    return accelerate(
        "--config_file", config, "--machine_rank", str(rank), "--main_process_port", port,
        "-m", "fashiondist", *train_args,
    )  # fmt: skip


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.1)


@contextlib.contextmanager
def reaped(*procs: subprocess.Popen) -> Iterator[None]:
    """Kill every process group of `procs` at the end, whatever happened (each was started with
    start_new_session=True, so its ranks share its group)."""
    try:
        yield
    finally:
        for proc in procs:
            for pid in descendants(proc.pid):  # ranks a launcher started in sessions of their own
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.communicate(timeout=30)


def start(cmd: list[str], env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        env=env or ENV,
        cwd=popen.pop("cwd", REPO),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **popen,
    )


def finish(*procs: subprocess.Popen, timeout: float = TIMEOUT) -> list[tuple[int, str, str]]:
    """(returncode, stdout, stderr) of each, waited for in turn within `timeout` overall."""
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        results.append((proc.returncode, out, err))
    return results
