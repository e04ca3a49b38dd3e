"""The signals and faults a cluster really sends, to a real 2-rank training (gloo on the CPU), through the
launchers users run (issue 23, items 14-16):

- SIGUSR1 to a plain `accelerate launch`: the launcher dies of it (its agent does not handle SIGUSR1); the
  ranks must not train on as orphans: they save OUT/last and exit (they ask Linux for SIGTERM when their
  launcher dies). Through launch/accelerate.sh the preemption signal (here USR2) is forwarded to the ranks.
- kill -9 of one rank: the surviving rank says so in one line, not a gloo traceback, and exits non-zero.
- two "nodes" started with different arguments refuse in one line each instead of hanging.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from launched import (
    ENV,
    LAUNCH,
    TINY,
    accelerate,
    alive,
    descendants,
    finish,
    free_port,
    multi_node_node,
    reaped,
    start,
    wait_for,
)

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

CPU_DDP = str(LAUNCH / "accelerate" / "cpu_ddp.yaml")
# Enough epochs of the bundled sample that a run signalled after its first epoch is far from its end.
LONG = [*TINY, "--data", "sample", "--epochs", "30"]


def _ranks(launcher: int) -> list[int]:
    """The training ranks under `launcher`: the processes the launcher gave a LOCAL_RANK."""
    ranks = []
    for pid in descendants(launcher):
        with contextlib.suppress(OSError):
            if b"\0LOCAL_RANK=" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes():
                ranks.append(pid)
    return ranks


def _rank_of(pid: int) -> str:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"RANK="))


def _first_epoch_saved(out: Path) -> bool:
    metrics = out / "metrics.jsonl"
    return (out / "last").is_dir() and metrics.is_file() and metrics.read_text().count("\n") >= 1


def _record(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def _kill_all(pids: list[int]) -> None:
    """Orphans are no longer under their launcher's tree: kill them by PID (a failing test leaves none)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_sigusr1_to_plain_accelerate_launch_leaves_no_orphan(tmp_path):
    out = tmp_path / "run"
    cmd = accelerate("--config_file", CPU_DDP, "--main_process_port", str(free_port()))
    proc = start([*cmd, "-m", "fashiondist", "train", *LONG, "--out", str(out)])
    ranks: list[int] = []
    with reaped(proc):
        try:
            wait_for(lambda: _first_epoch_saved(out), what="the first epoch")
            ranks = _ranks(proc.pid)
            assert len(ranks) == 2, ranks
            proc.send_signal(signal.SIGUSR1)
            rc, _, err = finish(proc, timeout=60)[0]
            assert rc != 0  # the launcher died of the signal it does not handle (138)
            wait_for(lambda: not any(alive(p) for p in ranks), timeout=90, what="the ranks to exit")
        finally:
            _kill_all(ranks)
    record = _record(out)
    assert record["status"] == "preempted", (record["status"], err[-4000:])
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["epoch"] < 30


def test_launch_accelerate_sh_forwards_the_configured_preemption_signal(tmp_path):
    out = tmp_path / "run"
    env = {
        **ENV,
        "FASHIONDIST_PREEMPT_SIGNAL": "USR2",
        "ACCELERATE": str(Path(sys.executable).parent / "accelerate"),
    }
    cmd = [
        "bash",
        str(LAUNCH / "accelerate.sh"),
        "--config_file",
        CPU_DDP,
        "--main_process_port",
        str(free_port()),
    ]
    proc = start([*cmd, "-m", "fashiondist", "train", *LONG, "--out", str(out)], env)
    with reaped(proc):
        wait_for(lambda: _first_epoch_saved(out), what="the first epoch")
        assert len(_ranks(proc.pid)) == 2
        proc.send_signal(signal.SIGUSR2)  # the script exec'd the launcher: this is its PID
        rc, _, err = finish(proc, timeout=120)[0]
    assert "SIGUSR2: saved" in err, err[-3000:]
    assert _record(out)["status"] == "preempted"


def test_kill_9_of_one_rank_gives_one_line_on_the_survivor(tmp_path):
    out, logs = tmp_path / "run", tmp_path / "logs"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        # The agent looks at its workers every 0.1 s by default and SIGTERMs the survivor as soon as it sees the
        # dead one, racing the survivor's own next collective (then it takes the preemption path, tested above).
        # Looking every 10 s lets the collective, a few milliseconds away in a training loop, notice first.
        "--monitor-interval",
        "10",
    ]
    cmd += [
        "--log-dir",
        str(logs),
        "--redirects",
        "3",
        "-m",
        "fashiondist",
        "train",
        *LONG,
        "--out",
        str(out),
    ]
    proc = start(cmd)
    with reaped(proc):
        wait_for(lambda: _first_epoch_saved(out), what="the first epoch")
        ranks = {_rank_of(pid): pid for pid in _ranks(proc.pid)}
        assert sorted(ranks) == ["0", "1"]
        os.kill(ranks["1"], signal.SIGKILL)
        rc, _, _ = finish(proc, timeout=120)[0]
    assert rc != 0
    (survivor,) = logs.glob("**/attempt_0/0/stderr.log")
    text = survivor.read_text()
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("fashiondist: error:")]
    assert len(errors) == 1 and "rank 0: another rank of the group is gone" in errors[0], text[-3000:]


def test_nodes_launched_with_different_arguments_refuse_in_one_line(tmp_path):
    out, port = tmp_path / "run", str(free_port())
    procs = [
        start(
            multi_node_node(
                rank,
                port,
                "train",
                *TINY,
                "--data",
                "sample",
                "--epochs",
                "1",
                "--out",
                str(out),
                "--batch-size",
                size,
            )
        )  # fmt: skip
        for rank, size in ((1, "128"), (0, "256"))
    ]
    t0 = time.monotonic()
    with reaped(*procs):
        results = finish(*procs, timeout=180)
    assert time.monotonic() - t0 < 180
    for (rc, _, err), mine, theirs in zip(results, ("128", "256"), ("256", "128"), strict=True):
        assert rc != 0
        lines = [line for line in err.splitlines() if "launched with another configuration" in line]
        assert len(lines) == 1, err[-3000:]
        assert f"batch_size: {mine} here, {theirs} there" in lines[0], lines[0]
    assert not (out / "last").exists()
