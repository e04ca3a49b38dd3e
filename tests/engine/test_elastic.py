"""Elastic restarts and the process group's settings, on a real 2-rank training (gloo on the CPU):

- launch/torchrun.sh (c10d rendezvous, --max-restarts): kill -9 one worker mid-epoch; the agent restarts
  the group, the restarted workers resume from OUT/last by themselves, and the run finishes without a
  relaunch, with the optimizer steps and learning rates of an uninterrupted run of the same global batch;
- `dist_timeout` (seconds) is the process group's collective timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from launched import ENV, LAUNCH, REPO, TIMEOUT, TINY, descendants, finish, free_port, reaped, start, wait_for

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

RUN = [*TINY, "--data", "sample", "--epochs", "2"]


def _metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _worker(launcher: int, rank: str) -> int | None:
    for pid in descendants(launcher):
        try:
            environ = b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"\0LOCAL_RANK=" in environ and f"\0RANK={rank}\0".encode() in environ + b"\0":
            return pid
    return None


def test_killed_worker_is_restarted_and_resumes_by_itself(tmp_path):
    straight, elastic, port = tmp_path / "straight", tmp_path / "elastic", str(free_port())
    one = subprocess.run(
        [sys.executable, "-m", "fashiondist", "train", *RUN, "--out", str(straight)],
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    env = {**ENV, "NPROC_PER_NODE": "2", "MAX_RESTARTS": "1", "MASTER_PORT": port, "RDZV_ID": f"test-{port}"}
    proc = start(
        ["bash", str(LAUNCH / "torchrun.sh"), *RUN, "--out", str(elastic)], {**env, "PYTHON": sys.executable}
    )
    with reaped(proc):
        wait_for(lambda: len(_metrics(elastic)) == 1 and (elastic / "last").is_dir(), what="the first epoch")
        victim = _worker(proc.pid, "1")
        assert victim is not None
        os.kill(victim, signal.SIGKILL)  # mid-epoch 2: the first epoch's line is all that is written
        assert len(_metrics(elastic)) == 1
        rc, _, err = finish(proc)[0]
    assert rc == 0, err[-4000:]
    assert "restart 1 by the elastic agent" in err, err[-4000:]
    want, got = _metrics(straight), _metrics(elastic)
    assert [m["epoch"] for m in got] == [1, 2]
    # the same optimizer steps and learning rates as the uninterrupted run (lr is a pure function of the step)
    assert [(m["step"], m["lr"]) for m in got] == [(m["step"], m["lr"]) for m in want]
    summary = json.loads((elastic / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2


PROBE = textwrap.dedent(
    """
    from fashiondist.config import TrainConfig
    from fashiondist.engine.launch_guard import backend_timeout
    from fashiondist.engine.trainer import make_accelerator
    acc = make_accelerator(TrainConfig(dist_timeout=77, precision="no"))
    print(f"PROBE rank {acc.process_index} of {acc.num_processes}: timeout {backend_timeout()}", flush=True)
    """
)


def test_dist_timeout_reaches_the_process_group(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port"]
    proc = start([*cmd, str(free_port()), str(probe)])
    with reaped(proc):
        rc, out, err = finish(proc)[0]
    assert rc == 0, err[-3000:]
    assert sorted(re.findall(r"PROBE rank \d of 2: timeout [\d.]+", out)) == [
        "PROBE rank 0 of 2: timeout 77.0",
        "PROBE rank 1 of 2: timeout 77.0",
    ]
