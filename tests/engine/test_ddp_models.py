"""Every registered model under 2 gloo ranks: one model on every rank, the 1-process run it equals, the export.

Four launches of `--models all`-style runs on 400 real sample images (360 train, 40 validation; a global batch of
128: 2 optimizer steps an epoch), shared by every assertion below:

- `two`: the 2-rank main job (`--models all --test`, EMA on), 2 epochs, seed 0;
- `accum`: 1 process, `--grad-accum 2`, the same micro-batch of 64 as each rank of `two`;
- `two_sync`: 2 ranks with `--sync-bn`, 1 epoch, seed 1, the models without dropout;
- `one`: 1 process, batch 128 in one piece, otherwise as `two_sync`.

What must hold, and why:

- Without sync_bn, 2 ranks x 64 and 1 process x 2 accumulated x 64 are the same computation: the same images
  in the same micro-batches (`TrainBatches` splits a global batch as [accumulation, rank, per device]), the
  same dropout masks (seeded per micro-batch slot, `seed_micro_batch`), BatchNorm over the same 64 images, and
  the gradient (g0 + g1) / 2 either way (halving is exact in binary floating point, a sum of two is the same
  in any order). So the parameters are bitwise equal, for every model, dropout models included. (BatchNorm's
  running statistics are not: the 1-process run updates them at both micro-batches, each rank at one.)
- With sync_bn, BatchNorm normalises over the 128 images of the global batch, as the 1-process run does, so
  the models without dropout train the same up to floating-point order (tolerance below). Dropout models
  draw their masks per 64-image slot, so they equal the accumulated run instead (the point above).
- Every rank holds the same parameters and buffers (BatchNorm's, the EMA's) at every checkpoint; the
  validation predictions are exactly best/'s predictions; `fashiondist export RUN` agrees for every run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch" / "accelerate"
# 1-thread ranks: two ranks on two cores, and the same arithmetic in every process (and in this one, below).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1"}
# Tiny but every layer present: the Keras ResNet at 1/8 of its filters, ResNet-9 at 1/8 width.
CONFIG = """\
per_model:
  resnet: {model_kwargs: {filters: [8, 16, 32, 64]}}
  resnet9: {model_kwargs: {width: 0.125}}
"""
# SGD at a small lr for every model (Adam's first step is lr x sign(g): a rounding-level change of a
# near-zero gradient moves a weight by 2 lr, which no rounding bound covers); fp32 on every CPU kind.
COMMON = ["--batch-size", "128", "--precision", "no", "--quiet", "--optimizer", "sgd", "--lr", "0.01"]
COMMON += ["--set", "eval_batch_size=16"]
UNIT_ROUNDOFF = 2.0**-24  # float32
GLOBAL_BATCH = 128
TRAIN_IMAGES = 360  # 400 images less the 10% validation split
# The module's first test also waits for the four launches of the shared fixture (2 to 5 minutes on 2 cores).
pytestmark = [pytest.mark.ddp, pytest.mark.slow, pytest.mark.timeout(1200)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks() -> list[str]:
    port = str(_free_port())
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    return [*launch, str(LAUNCH / "cpu_ddp.yaml"), "--main_process_port", port, "-m"]


def _train(out: Path, *args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [*(launcher or [sys.executable, "-m"]), "fashiondist", "train", *COMMON, *args, "--out", str(out)]
    proc = subprocess.run(
        cmd, env=ENV, capture_output=True, text=True, timeout=600, cwd=REPO, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-5000:]}"
    return proc


def _model_names() -> list[str]:
    from fashiondist.models.registry import list_models

    return list_models()


def _has_dropout(name: str) -> bool:
    from fashiondist.models.layers import Dropout
    from fashiondist.models.registry import create_model

    model = create_model(name, 10)
    return any(isinstance(m, Dropout | torch.nn.Dropout) and m.p > 0 for m in model.modules())


def _has_batchnorm(name: str) -> bool:
    from fashiondist.models.registry import create_model

    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in create_model(name, 10).modules())


NO_DROPOUT = [name for name in _model_names() if not _has_dropout(name)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_csv, sample_test_csv) -> dict[str, Path]:
    """The four runs of the module docstring (parents of one run directory per model)."""
    root = tmp_path_factory.mktemp("ddp_models")
    config = root / "tiny.yaml"
    config.write_text(CONFIG)
    data = ["--data", str(tiny_csv), "--config", str(config)]
    every = ["--models", "all", "--epochs", "2", "--seed", "0", "--ema", "0.9", *data]
    out = {name: root / name for name in ("two", "accum", "two_sync", "one")}
    launches = {
        "two": _train(out["two"], *every, "--test", str(sample_test_csv), launcher=_two_ranks()),
        "accum": _train(out["accum"], *every, "--grad-accum", "2"),
    }
    plain = ["--models", ",".join(NO_DROPOUT), "--epochs", "1", "--seed", "1", *data]
    launches["two_sync"] = _train(out["two_sync"], *plain, "--sync-bn", launcher=_two_ranks())
    launches["one"] = _train(out["one"], *plain)
    for name, proc in launches.items():  # beside each run directory, for the warnings test
        (root / f"{name}.stderr").write_text(proc.stderr)
    return out


def _weights(run_dir: Path, which: str = "last/model.safetensors") -> dict[str, np.ndarray]:
    return load_file(str(run_dir / which))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _initial_weights(run_dir: Path) -> dict[str, np.ndarray]:
    """The weights the run started from: the registry's model seeded as `prepare_training` seeds it."""
    from accelerate.utils import set_seed

    from fashiondist.config import load_saved_config
    from fashiondist.models.registry import create_model

    cfg = load_saved_config(run_dir / "config.yaml")
    meta = json.loads((run_dir / "last" / "model.json").read_text())
    set_seed(cfg.seed)
    model = create_model(cfg.model, meta["num_classes"], **cfg.model_kwargs)
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", _model_names())
def test_two_ranks_equal_one_process_with_the_same_micro_batch(runs, name):
    two, accum = runs["two"] / name, runs["accum"] / name
    a, b = _weights(two), _weights(accum)
    assert a.keys() == b.keys()
    # running statistics aside (see the module docstring), every tensor is bitwise the same
    differ = [
        k for k in a if "running_" not in k and "num_batches" not in k and not np.array_equal(a[k], b[k])
    ]
    assert differ == [], f"{name}: 2 ranks x 64 and 1 process x 2 x 64 differ in {differ}"
    steps = [m["step"] for m in _metrics(two)]
    assert steps == [m["step"] for m in _metrics(accum)] == [2, 4]
    assert [m["lr"] for m in _metrics(two)] == [m["lr"] for m in _metrics(accum)]


@pytest.mark.parametrize("launch", ["two", "two_sync"])
def test_ddp_gets_gradients_in_its_buckets_layout(runs, launch):
    """DDP warns once per run when a parameter's gradient has other strides than the parameter (its buckets
    then copy every step): a custom backward (the models' kernels) must return the weight's own layout."""
    stderr = runs[launch].with_suffix(".stderr").read_text()
    assert "Grad strides do not match bucket view strides" not in stderr


@pytest.mark.parametrize("name", _model_names())
def test_ranks_agree_at_every_checkpoint(runs, name):
    for run in ("two", "two_sync") if name in NO_DROPOUT else ("two",):
        records = _metrics(runs[run] / name)
        assert [r["ranks_in_sync"] for r in records] == [True] * len(records), f"{run}/{name}"
        summary = json.loads((runs[run] / name / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True


@pytest.mark.parametrize("name", _model_names())
def test_validation_predictions_are_best_s_predictions(runs, name):
    """Every rank predicted its shard of the validation split with best/'s weights: the gathered predictions
    are, bitwise, what best/ predicts on each shard with the same batches and threads (a rank that kept its own
    BatchNorm statistics, or its own EMA's, would predict its shard differently)."""
    from fashiondist.config import Tta, load_saved_config
    from fashiondist.data.sources import load_data
    from fashiondist.data.split import stratified_split
    from fashiondist.engine.batches import shard_for_eval
    from fashiondist.engine.evaluate import model_probs
    from fashiondist.models.checkpoint import load_model

    run_dir = runs["two"] / name
    cfg = load_saved_config(run_dir / "config.yaml")
    data = load_data(cfg.data)
    _, val = stratified_split(data.labels, cfg.val_fraction, cfg.seed)
    images = torch.as_tensor(data.images[val]).unsqueeze(1)  # [M, 1, 28, 28] uint8
    model, _ = load_model(run_dir / "best")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shards = [shard_for_eval(len(val), rank, 2)[0] for rank in (0, 1)]
        probs = torch.cat([model_probs(model, images[s], cfg.eval_batch_size, Tta(cfg.tta)) for s in shards])
    finally:
        torch.set_num_threads(threads)
    with np.load(run_dir / "val_predictions.npz") as saved:
        np.testing.assert_array_equal(saved["probs"], probs[: len(val)].numpy(), err_msg=name)


def test_main_job_exports_and_agrees(runs):
    best = json.loads((runs["two"] / "best.json").read_text())
    report = json.loads((runs["two"] / "export_report.json").read_text())
    assert (runs["two"] / "model.onnx").is_file() and (runs["two"] / "submission.csv").is_file()
    assert report["accuracy"]["agrees"] is True, report["accuracy"]
    assert best  # the leaderboard's winner was the one exported


@pytest.mark.parametrize("name", _model_names())
def test_export_of_every_two_rank_run_agrees(runs, name, tmp_path, capsys):
    from fashiondist.cli import main

    for run in ("two", "two_sync") if name in NO_DROPOUT else ("two",):
        out = tmp_path / f"{run}.onnx"
        code = main(["export", str(runs[run] / name), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 0 and out.is_file(), f"{run}/{name}: {err[-2000:]}"


@pytest.mark.parametrize("name", [n for n in NO_DROPOUT if _has_batchnorm(n)])
def test_sync_bn_checkpoint_is_plain_batchnorm(runs, name):
    from fashiondist.models.checkpoint import load_model
    from fashiondist.models.registry import create_model

    run_dir = runs["two_sync"] / name
    meta = json.loads((run_dir / "last" / "model.json").read_text())
    plain = create_model(name, meta["num_classes"], **meta["kwargs"]).state_dict()
    for which in ("last/model.safetensors", "best/model.safetensors"):
        assert set(_weights(run_dir, which)) == set(plain), which
    texts = [p.read_text() for p in run_dir.rglob("*.json")] + [(run_dir / "config.yaml").read_text()]
    assert not any("Sync" in text for text in texts)
    model, _ = load_model(run_dir / "best")
    kinds = {
        type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    }
    assert kinds == {"BatchNorm2d"}


# With sync_bn, 2 ranks differ from 1 process only in the order of floating-point sums. The longest sums are
# BatchNorm's per channel (and a conv's weight gradient): over N = global batch x feature-map area <= 128 x 28 x
# 28 values, summed one after another in float32 they are off by up to N u relative to their magnitude
# (Higham's gamma_N), N u = 6.0e-3. A step's update inherits its gradient's error from at most 4 such sums in
# a row (BatchNorm's mean and variance forward, its two sums backward), and the S = 2 steps of the epoch add
# theirs: the run's total update may differ by 4 x S x N u = 4.8e-2 of its size.
SYNC_TOLERANCE = 4 * (TRAIN_IMAGES // GLOBAL_BATCH) * GLOBAL_BATCH * 28 * 28 * UNIT_ROUNDOFF


@pytest.mark.parametrize("name", NO_DROPOUT)
def test_sync_bn_two_ranks_equal_one_process(runs, name):
    two, one = runs["two_sync"] / name, runs["one"] / name
    a, b, start = _weights(two), _weights(one), _initial_weights(one)
    params = [k for k in b if not k.endswith("num_batches_tracked")]
    diff = np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in params))
    update = np.sqrt(sum(np.sum((b[k].astype(np.float64) - start[k]) ** 2) for k in params))
    assert diff <= SYNC_TOLERANCE * update, (
        f"{name}: |2 ranks - 1 process| = {diff / update:.2e} of the update"
    )
    assert [m["step"] for m in _metrics(two)] == [m["step"] for m in _metrics(one)] == [2]


# --- resuming with another world size or accumulation (issue 20, item 5) ---------------------------------------
def _resumable_copy(run_dir: Path, dest: Path) -> Path:
    """`run_dir` as it was after epoch 1 of 2: its `.last.prev/` (the epoch-1 checkpoint, exactly what an
    epoch-end save or a preemption there leaves) as `last/`; the resumed run drops the later metrics line."""
    import shutil

    shutil.copytree(run_dir, dest)
    shutil.rmtree(dest / "last")
    (dest / ".last.prev").rename(dest / "last")
    assert json.loads((dest / "last" / "trainer_state.json").read_text())["epoch"] == 1
    return dest


def _resume(runs, straight: Path, dest: Path, *layout: str, launcher=None) -> subprocess.CompletedProcess:
    """Resume the epoch-1 copy of `straight` (a run of `runs['two']`'s command) to its end, with `layout`."""
    config = runs["two"].parent / "tiny.yaml"
    args = ["--model", straight.name, "--epochs", "2", "--seed", "0", "--ema", "0.9", "--config", str(config)]
    data = json.loads((straight / "run.json").read_text())["config"]["data"]
    proc = _train(dest, *args, "--data", data, *layout, "--resume", "auto", launcher=launcher)
    assert f"resuming {dest / 'last'} at epoch 2, step 2" in proc.stderr
    return proc


def _same_schedule(resumed: Path, straight: Path) -> None:
    """The global batch, the step count and the learning rate continue as in the straight run."""
    ours, theirs = _metrics(resumed), _metrics(straight)
    assert [m["epoch"] for m in ours] == [1, 2]
    for key in ("step", "lr", "val_count"):
        assert [m[key] for m in ours] == [m[key] for m in theirs], key
    assert json.loads((resumed / "summary.json").read_text())["global_batch"] == GLOBAL_BATCH


def _same_parameters(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    differ = [
        k for k in wa if "running_" not in k and "num_batches" not in k and not np.array_equal(wa[k], wb[k])
    ]
    assert differ == [], f"differ: {differ}"


def test_resume_two_ranks_on_one_process(runs, tmp_path):
    """2 ranks x 64 -> 1 process x 2 accumulated x 64 (a BatchNorm model with EMA): the same micro-batches,
    so the resumed run ends with the straight run's parameters, bitwise."""
    straight = runs["two"] / "convnet"
    dest = _resumable_copy(straight, tmp_path / "convnet")
    proc = _resume(runs, straight, dest, "--grad-accum", "2")
    assert "global batch 128 = 64 per device x 2 accumulation x 1 process(es)" in proc.stderr
    _same_schedule(dest, straight)
    _same_parameters(dest, straight)


def test_resume_one_process_on_two_ranks(runs, tmp_path):
    """1 process x 2 accumulated -> 2 ranks (a dropout model): its masks follow the micro-batch, not the rank."""
    straight = runs["accum"] / "cnn-dropout"
    dest = _resumable_copy(straight, tmp_path / "cnn-dropout")
    proc = _resume(runs, straight, dest, launcher=_two_ranks())
    assert "global batch 128 = 64 per device x 1 accumulation x 2 process(es)" in proc.stderr
    _same_schedule(dest, straight)
    _same_parameters(dest, straight)


def test_resume_with_another_accumulation(runs, tmp_path):
    """2 ranks x 64 -> 2 ranks x 2 accumulated x 32: another micro-batch, the same schedule."""
    straight = runs["two"] / "cnn"
    dest = _resumable_copy(straight, tmp_path / "cnn")
    proc = _resume(runs, straight, dest, "--grad-accum", "2", launcher=_two_ranks())
    assert "global batch 128 = 32 per device x 2 accumulation x 2 process(es)" in proc.stderr
    _same_schedule(dest, straight)


def test_cpu_sync_batchnorm_is_batchnorm_over_the_whole_batch(tmp_path):
    """CpuSyncBatchNorm on 2 gloo ranks x 8 images = BatchNorm over the 16 images, gradients and statistics,
    against a float64 reference."""
    out = tmp_path / "result.json"
    script = Path(__file__).with_name("sync_bn_check.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(_free_port()), str(out)],
        env=ENV, capture_output=True, text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "CpuSyncBatchNorm" in result["kinds"] and "BatchNorm2d" not in result["kinds"]
    # float32 against float64: BatchNorm's per-channel sums run over N = 16 x 26 x 26 values, each off by up to
    # N u of its magnitude (gamma_N), and a gradient goes through at most 4 of them in a row (mean and
    # variance forward, two sums backward): 4 N u = 2.6e-3.
    bound = 4 * 16 * 26 * 26 * UNIT_ROUNDOFF
    assert max(result["grads"].values()) <= bound, result["grads"]
    assert max(result["stats"].values()) <= bound, result["stats"]
