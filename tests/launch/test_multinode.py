"""Two "nodes" on one machine, as a cluster starts them: 2 nodes x 1 CPU process (gloo) through each of the
repository's multi-node launchers, each training the same tiny `cnn` run into one shared `--out` as nodes on
a shared file system do. Every launcher must leave one run directory whose weights equal, bitwise, those of
the 2-process single-node run (`cpu_ddp.yaml`).

Why bitwise: the arithmetic is the same. Each rank computes its half of every global batch in one thread
(OMP_NUM_THREADS=1) with the same kernels; DDP's all-reduce of two gradients is one fp32 addition, and
a + b == b + a exactly, so even a launcher that numbers the nodes the other way round (c10d rendezvous)
gives the same sums; the mean divides by 2, exact in binary.

    accelerate launch --config_file launch/accelerate/cpu_multi_node.yaml --machine_rank {0,1} ...
    NNODES=2 NODE_RANK={0,1} NPROC_PER_NODE=1 bash launch/torchrun.sh ...
    sbatch launch/slurm/train.sbatch ...   # under a stand-in srun that starts the two "nodes"
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from launched import ENV, LAUNCH, REPO, TINY, accelerate, finish, free_port, multi_node_node, reaped, start
from safetensors.numpy import load_file

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A 10-class train.csv of 400 real sample images (a stratified pick): one epoch in a few seconds."""
    from fashiondist.data.csvio import write_competition_csv
    from fashiondist.data.sources import load_data
    from fashiondist.data.split import stratified_split

    sample = load_data("sample")
    keep, _ = stratified_split(sample.labels, 1 - 400 / len(sample.labels), seed=1)
    path = tmp_path_factory.mktemp("nodes") / "train.csv"
    write_competition_csv(path, sample.ids[keep], sample.images[keep], sample.labels[keep])
    return path


def _train_args(data: Path, out: Path) -> list[str]:
    return ["train", *TINY, "--epochs", "1", "--data", str(data), "--out", str(out)]


def _ok(results) -> None:
    for rc, _, err in results:
        assert rc == 0, f"exit {rc}\n{err[-4000:]}"


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(run_dir / "last" / "model.safetensors"))


def _assert_bitwise(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), f"{key}: max |diff| {np.abs(a[key] - b[key]).max():.3e}"


def _world(run_dir: Path) -> int:
    return json.loads((run_dir / "summary.json").read_text())["world_size"]


@pytest.fixture(scope="module")
def single_node(tiny_data, tmp_path_factory) -> Path:
    """The reference: 2 processes on one node, through the single-node recipe."""
    out = tmp_path_factory.mktemp("single") / "run"
    cmd = accelerate("--config_file", str(LAUNCH / "accelerate" / "cpu_ddp.yaml"))
    cmd += ["--main_process_port", str(free_port()), "-m", "fashiondist", *_train_args(tiny_data, out)]
    proc = start(cmd)
    with reaped(proc):
        _ok(finish(proc))
    assert _world(out) == 2
    return out


def test_accelerate_multi_node_config_as_two_launches(tiny_data, single_node, tmp_path):
    out, port = tmp_path / "run", str(free_port())
    procs = [start(multi_node_node(rank, port, *_train_args(tiny_data, out))) for rank in (1, 0)]
    with reaped(*procs):
        _ok(finish(*procs))
    assert _world(out) == 2
    _assert_bitwise(_weights(out), _weights(single_node))


def test_torchrun_sh_two_nodes(tiny_data, single_node, tmp_path):
    out, port = tmp_path / "run", str(free_port())
    env = {**ENV, "NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_PORT": port, "PYTHON": sys.executable}
    env["RDZV_ID"] = f"test-{port}"
    procs = [
        start(
            ["bash", str(LAUNCH / "torchrun.sh"), *_train_args(tiny_data, out)[1:]], {**env, "NODE_RANK": r}
        )
        for r in ("1", "0")
    ]
    with reaped(*procs):
        _ok(finish(*procs))
    assert _world(out) == 2
    _assert_bitwise(_weights(out), _weights(single_node))


# Stand-ins for SLURM's commands on one host: `scontrol show hostnames` names this host twice (two "nodes"),
# `srun` starts one task per node with the variables SLURM sets for each (SLURM_PROCID, SLURM_LOCALID,
# SLURM_NODEID), forwards SIGUSR1/SIGUSR2/SIGTERM to them, and fails when a task fails.
FAKE_SCONTROL = """#!/usr/bin/env bash
case "$1 $2" in
    "show hostnames") printf '127.0.0.1\\n127.0.0.1\\n' ;;
    *) echo "fake scontrol: $*" >&2; exit 1 ;;
esac
"""
FAKE_SRUN = """#!/usr/bin/env bash
while [[ $1 == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
    SLURM_PROCID=$node SLURM_LOCALID=0 SLURM_NODEID=$node "$@" &
    pids+=($!)
done
for sig in USR1 USR2 TERM; do trap 'kill -'$sig' "${pids[@]}"' $sig; done
status=0
for pid in "${pids[@]}"; do
    while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done
    (( rc > status )) && status=$rc
done
exit "$status"
"""


def test_sbatch_under_a_stand_in_srun_two_nodes(tiny_data, single_node, tmp_path):
    bin_dir, out = tmp_path / "bin", tmp_path / "run"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {
        **ENV,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "MASTER_PORT": str(free_port()),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "localhost,localhost",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_SUBMIT_DIR": str(REPO),
    }
    proc = start(["bash", str(LAUNCH / "slurm" / "train.sbatch"), *_train_args(tiny_data, out)[1:]], env)
    with reaped(proc):
        _ok(finish(proc))
    assert _world(out) == 2
    _assert_bitwise(_weights(out), _weights(single_node))
