"""The engine's promises, on real images from the bundled sample, on the CPU (gloo for DDP).

BatchNorm and dropout: their statistics and masks are per process by nature, so the DDP and accumulation
equivalence tests use the notebook's `cnn` (conv, pool, dense: neither). Everything else (data order,
augmentation, learning rate, loss scaling) is the engine's and must match.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from fashiondist.data.csvio import write_competition_csv
from fashiondist.data.split import stratified_split

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch" / "accelerate"
# 1-thread ranks: two ranks on two cores, and the same arithmetic in every process.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1"}
# fp32 on every CPU kind (auto would pick bf16 on one with avx512_bf16): the equivalence tests compare weights.
TINY = [
    "--model",
    "cnn",
    "--batch-size",
    "64",
    "--epochs",
    "2",
    "--quiet",
    "--set",
    "eval_batch_size=256",
    "--precision",
    "no",
]


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory, sample) -> Path:
    """A 10-class train.csv of 660 real sample images (a stratified pick), for quick runs."""
    keep, _ = stratified_split(sample.labels, 1 - 660 / len(sample.labels), seed=1)
    path = tmp_path_factory.mktemp("data") / "train.csv"
    write_competition_csv(path, sample.ids[keep], sample.images[keep], sample.labels[keep])
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(out: Path, data: Path, *extra: str, launcher: list[str] | None = None, **popen):
    """`fashiondist train` of the TINY run on `data` into `out` (in a child process, or under `launcher`)."""
    cmd = [*(launcher or [sys.executable, "-m"]), "fashiondist", "train", *TINY, "--data", str(data)]
    cmd += ["--out", str(out), *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240, cwd=REPO, **popen)


def _accelerate(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *args, "-m"]


def _two_cpu_ranks() -> list[str]:
    """`accelerate launch` of two CPU ranks on this host (cpu_ddp.yaml), on a free port."""
    port = str(_free_port())
    return _accelerate("--config_file", str(LAUNCH / "cpu_ddp.yaml"), "--main_process_port", port)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{output}"
    return proc


def _weights(run_dir: Path, which: str = "last") -> dict[str, np.ndarray]:
    return load_file(str(run_dir / which / "model.safetensors"))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.ddp
def test_two_rank_ddp_run_forms_one_group(tmp_path, small_csv):
    """Two ranks train as one process would (the step itself: test_accumulation.py, against float64)."""
    from fashiondist.config import load_saved_config
    from fashiondist.data.sources import load_data

    ddp = _ok(_train(tmp_path / "ddp", small_csv, launcher=_two_cpu_ranks()))
    assert "64 = 32 per device x 1 accumulation x 2 process(es)" in ddp.stderr
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True
    distributed = json.loads((tmp_path / "ddp" / "run.json").read_text())["environment"]["distributed"]
    assert distributed["world_size"] == 2 and distributed["backend"] == "gloo"
    data = load_data(str(small_csv))
    cfg = load_saved_config(tmp_path / "ddp" / "config.yaml")
    _, val = stratified_split(data.labels, cfg.val_fraction, cfg.seed)
    assert [m["val_count"] for m in _metrics(tmp_path / "ddp")] == [len(val)] * 2  # every image, once


def test_resume_continues_bitwise(tmp_path, small_csv):
    # A constant learning rate does not depend on the planned number of epochs, so "2 epochs, then resume to
    # 4" is the same run as "4 epochs" (with the linear decay the plan changes; see the SIGTERM test for that case).
    flat = ["--schedule", "constant", "--set", "warmup_fraction=0"]
    flat += ["--model", "convnet", "--set", "model_kwargs.width=0.5"]
    flat += ["--set", "ema=0.9"]  # the EMA too: its warm-up counts optimizer steps, which a resume restores
    _ok(_train(tmp_path / "straight", small_csv, *flat, "--epochs", "4"))
    _ok(_train(tmp_path / "resumed", small_csv, *flat, "--epochs", "2"))
    resumed = _ok(_train(tmp_path / "resumed", small_csv, *flat, "--epochs", "4", "--resume", "auto"))
    assert "resuming" in resumed.stderr
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(np.array_equal(a[k], b[k]) for k in a), "resumed weights must be bitwise equal"
    a, b = _weights(tmp_path / "straight", "last/ema"), _weights(tmp_path / "resumed", "last/ema")
    assert all(np.array_equal(a[k], b[k]) for k in a), "the resumed EMA must be bitwise equal"
    assert [m["epoch"] for m in _metrics(tmp_path / "resumed")] == [1, 2, 3, 4]
    straight_acc = [m["val_acc"] for m in _metrics(tmp_path / "straight")]
    assert [m["val_acc"] for m in _metrics(tmp_path / "resumed")] == straight_acc


@pytest.mark.ddp
def test_gathered_validation_count_is_exact_with_an_odd_split(tmp_path, small_csv):
    from fashiondist.data.sources import load_data

    data = load_data(str(small_csv))
    fraction = 0.15  # 99 validation images of the 660
    _, val = stratified_split(data.labels, fraction, seed=0)
    assert len(val) % 2 == 1, "the split must be odd for this test to mean something"
    split = ["--val-fraction", str(fraction), "--epochs", "1"]
    _ok(_train(tmp_path / "odd", small_csv, *split, launcher=_two_cpu_ranks()))
    assert [m["val_count"] for m in _metrics(tmp_path / "odd")] == [len(val)]
    with np.load(tmp_path / "odd" / "val_predictions.npz", allow_pickle=False) as preds:
        assert preds["probs"].shape == (len(val), 10)
        np.testing.assert_array_equal(preds["y_true"], data.labels[val])


@pytest.mark.ddp
def test_multi_node_on_one_host(tmp_path, small_csv):
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        config = ["--config_file", str(LAUNCH / "cpu_multi_node.yaml"), "--machine_rank", str(rank)]
        launcher = _accelerate(*config, "--main_process_ip", "127.0.0.1", "--main_process_port", port)
        # One --out for both, as machines sharing a file system use it; only the global main process writes.
        cmd = [*launcher, "fashiondist", "train", *TINY, "--data", str(small_csv)]
        cmd += ["--out", str(tmp_path / "run")]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        procs.append(subprocess.Popen(cmd, env=ENV, cwd=REPO, **pipes))
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    assert "x 2 process(es)" in outs[0][1], "machine 0 hosts the main process and logs"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True


def test_sigterm_saves_a_resumable_checkpoint_mid_epoch(tmp_path, small_csv):
    args = ["--epochs", "8", "--batch-size", "32"]
    _ok(_train(tmp_path / "straight", small_csv, *args))
    cmd = [sys.executable, "-m", "fashiondist", "train", *TINY, *args, "--data", str(small_csv)]
    cmd += ["--out", str(tmp_path / "cut")]
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "cut" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)  # the first epoch has finished: now stop it somewhere after
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: saved" in err and "--resume" in err
    state = json.loads((tmp_path / "cut" / "last" / "trainer_state.json").read_text())
    assert state["epoch"] < 8
    leftovers = [p.name for p in (tmp_path / "cut").rglob("*") if "tmp" in p.name or p.name.startswith(".")]
    leftovers.remove(".last.prev")  # last/ as it was before the save: the fallback for a damaged last/
    assert leftovers == [], f"partial files left behind: {leftovers}"
    cut = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert cut["status"] == "preempted" and cut["result"]["epochs"] == state["epoch"]
    _ok(_train(tmp_path / "cut", small_csv, *args, "--resume", "auto"))
    record = json.loads((tmp_path / "cut" / "run.json").read_text())  # the first start, and the resume
    assert record["status"] == "finished" and record["started"] == cut["started"]
    assert [r["command"][-2:] for r in record["resumes"]] == [["--resume", "auto"]]
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "cut")
    assert all(np.array_equal(a[k], b[k]) for k in a), "the resumed run must end bitwise as the straight one"


def test_non_finite_loss_stops_with_the_step(tmp_path, small_csv):
    proc = _train(tmp_path / "nan", small_csv, "--lr", "1e30", "--optimizer", "sgd", "--epochs", "1")
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("fashiondist: error: cnn: non-finite loss at optimizer step "), line
    assert not (tmp_path / "nan" / "last").exists()
    record = json.loads((tmp_path / "nan" / "run.json").read_text())
    assert record["status"] == "failed" and "non-finite loss" in record["result"]["error"]


def test_bf16_autocast_trains_and_evaluates_in_several_batches(tmp_path, small_csv):
    flags = ["--precision", "bf16", "--epochs", "1", "--set", "eval_batch_size=16", "--tta", "flip"]
    _ok(_train(tmp_path / "bf16", small_csv, *flags))
    (record,) = _metrics(tmp_path / "bf16")
    assert np.isfinite(record["train_loss"]) and record["val_acc"] > 0.3
    assert json.loads((tmp_path / "bf16" / "summary.json").read_text())["precision"] == "bf16"


@pytest.mark.ddp
def test_torchrun_forms_one_gloo_group(tmp_path, small_csv):
    """Under torchrun (no accelerate launcher, no ACCELERATE_USE_CPU) a CPU machine still trains as one group."""
    env = {k: v for k, v in ENV.items() if k != "ACCELERATE_USE_CPU"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher = [*torchrun, "--master_port", str(_free_port()), "-m"]
    cmd = [*launcher, "fashiondist", "train", *TINY, "--epochs", "1", "--data", str(small_csv)]
    cmd += ["--out", str(tmp_path / "tr")]
    proc = _ok(subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO))
    assert "64 = 32 per device x 1 accumulation x 2 process(es)" in proc.stderr
    assert json.loads((tmp_path / "tr" / "summary.json").read_text())["ranks_in_sync"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only where there is no CUDA GPU")
def test_fp16_without_a_gpu_is_one_clear_error(tmp_path, capsys):
    from fashiondist.cli import main

    assert main(["train", "--model", "cnn", "--precision", "fp16", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == (
        "fashiondist: error: --precision fp16 needs a CUDA GPU; this machine has none "
        "(hint: use --precision auto on the CPU: bf16 where the CPU has it natively, else fp32)"
    )
    assert not (tmp_path / "run").exists()
