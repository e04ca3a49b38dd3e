"""Gradient accumulation is one big batch: `PreparedTraining.step` over 4 micro-batches of 32 moves the
weights as one step over the same 128 images does (the engine's loss scaling, data order and step timing).

The two fp32 steps sum the batch's terms in different orders, so they are not bitwise equal, and how far they
may drift apart depends on the CPU's kernels (AMX, AVX-512, AVX2 block their sums differently). So neither
side is compared with the other at a tolerance someone measured: each is compared with a float64 reference
of the same step, within a bound derived from fp32's unit roundoff (see `_fp32_bound`).

One SGD step with no momentum, no weight decay and lr 1 makes the weight change the gradient itself:
w1 = fl(w0 - g), so g = w0 - w1 (exact in float64), off from the step's gradient by the rounding of w1 only.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.numpy import load_file

from fashiondist.config import Optimizer, Schedule, TrainConfig, load_saved_config
from fashiondist.data.sources import load_data
from fashiondist.data.split import stratified_split
from fashiondist.engine.prepared import TrainTally, prepare_training
from fashiondist.models.registry import create_model

# Numerics-sensitive: CI runs this module again under AVX-512 (no AMX) and AVX2 kernel holds (.ci/run).
pytestmark = pytest.mark.numerics

REPO = Path(__file__).resolve().parents[2]
CPU_DDP = REPO / "launch" / "accelerate" / "cpu_ddp.yaml"
BATCH = 128
U32 = 2.0**-24  # fp32 unit roundoff
# The longest sum in the cnn's forward or backward pass: the first dense layer's dot products over the
# 32 x 13 x 13 pooled features (the conv's 3x3 taps, the 64 hidden units and the batch of 128 are shorter).
LONGEST_SUM = 32 * 13 * 13


def _fp32_bound(per_example_abs: np.ndarray, weights_after: np.ndarray) -> np.ndarray:
    """How far an fp32 gradient may be from the exact one, element by element.

    A sum of n fp32 terms in any order is within n * u * (sum of their magnitudes) of the exact sum (Higham,
    Accuracy and Stability, 4.2); every gradient element is a chain of such sums no longer than LONGEST_SUM,
    and the per-example gradients' magnitudes summed over the batch (float64) bound the magnitudes of the
    terms. Recovering g from w1 = fl(w0 - g) adds w1's own rounding, u * |w1|.
    """
    return LONGEST_SUM * U32 * per_example_abs + U32 * np.abs(weights_after)


@pytest.fixture(scope="module")
def cfg() -> TrainConfig:
    return TrainConfig(
        model="cnn", batch_size=BATCH, epochs=1, optimizer=Optimizer.SGD, momentum=0.0, weight_decay=0.0,
        lr=1.0, schedule=Schedule.CONSTANT, warmup_fraction=0.0, augment=False, precision="no", quiet=True,
    )  # fmt: skip


def _one_step(cfg: TrainConfig, acc: Accelerator, images, labels, num_classes: int):
    """(weights before, weights after, the micro-batches the step consumed) of the engine's first step."""
    training = prepare_training(cfg, acc, images, labels, num_classes)
    before = {k: v.detach().double().clone() for k, v in training.raw_model.state_dict().items()}
    consumed = []

    def recorded():
        for x, y in training.batches.epoch(0):
            consumed.append((x.clone(), y.clone()))
            yield x, y

    assert training.step(recorded(), 0, TrainTally(acc.device, 0))
    after = {k: v.detach().double().clone() for k, v in training.raw_model.state_dict().items()}
    return before, after, consumed


def _float64_reference(cfg, weights, images, labels, num_classes):
    """The batch's mean-loss gradient in float64, and the magnitudes of its per-example terms summed."""
    model = create_model(cfg.model, num_classes).double()
    model.load_state_dict(weights)

    def grads(x, y):
        model.zero_grad(set_to_none=True)
        logits = model.classify(model.normalize(x))  # the loss in float64 (the model's own casts to fp32)
        F.cross_entropy(logits, y, reduction="sum").backward()
        return {k: p.grad.detach().clone() / len(labels) for k, p in model.named_parameters()}

    mean = grads(images, labels)
    magnitude = {k: torch.zeros_like(v) for k, v in mean.items()}
    for i in range(len(labels)):
        for k, g in grads(images[i : i + 1], labels[i : i + 1]).items():
            magnitude[k] += g.abs()
    return mean, magnitude


def test_accumulation_matches_one_big_batch(fresh_accelerate, cfg, sample):
    acc = Accelerator(cpu=True, mixed_precision="no")
    images, labels = sample.images[:1024], sample.labels[:1024]
    k = int(sample.labels.max()) + 1
    w0, big, (batch,) = _one_step(cfg, acc, images, labels, k)
    w0_acc, accum, micro = _one_step(dataclasses.replace(cfg, grad_accum=4), acc, images, labels, k)
    assert all(torch.equal(w0[n], w0_acc[n]) for n in w0), "both runs start from the same seeded weights"
    assert [len(y) for _, y in micro] == [BATCH // 4] * 4
    # The same 128 images in the same order: exact.
    assert torch.equal(torch.cat([x for x, _ in micro]), batch[0])
    assert torch.equal(torch.cat([y for _, y in micro]), batch[1])

    exact, magnitude = _float64_reference(cfg, w0, *batch, k)
    for name, g64 in exact.items():
        bound = _fp32_bound(magnitude[name].numpy(), big[name].numpy())
        for label, after in (("one batch", big), ("4 micro-batches", accum)):
            g32 = (w0[name] - after[name]).numpy()  # lr 1, plain SGD: the step's gradient
            err = np.abs(g32 - g64.numpy())
            worst = np.unravel_index(np.argmax(err - bound), err.shape)
            assert np.all(err <= bound), (
                f"{label}: {name}{list(worst)} off by {err[worst]:.3g} > {bound[worst]:.3g}"
            )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
def test_two_rank_ddp_step_matches_one_process(fresh_accelerate, tiny_csv, tmp_path):
    """Two gloo ranks of 128 images each step as one process over the 256 does: the first optimizer step of a
    real `accelerate launch` run, and the same step in this process, each within the fp32 bound of float64."""
    one_step = ["--model", "cnn", "--batch-size", "256", "--epochs", "1", "--precision", "no", "--quiet"]
    one_step += ["--optimizer", "sgd", "--lr", "1", "--schedule", "constant", "--set", "warmup_fraction=0"]
    for setting in ("momentum=0", "weight_decay=0", "label_smoothing=0", "augment=false", "ema=0"):
        one_step += ["--set", setting]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_DDP)]
    launch += ["--main_process_port", str(_free_port()), "-m", "fashiondist", "train", *one_step]
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    cmd = [*launch, "--data", str(tiny_csv), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "256 = 128 per device x 1 accumulation x 2 process(es)" in proc.stderr

    cfg = load_saved_config(out / "config.yaml")  # the very settings the ranks ran with
    data = load_data(str(tiny_csv))
    train_idx, _ = stratified_split(data.labels, cfg.val_fraction, cfg.seed)
    images, labels, k = data.images[train_idx], data.labels[train_idx], data.num_classes
    acc = Accelerator(cpu=True, mixed_precision="no")
    w0, single, (batch,) = _one_step(cfg, acc, images, labels, k)
    assert len(images) // 256 == 1, "one optimizer step in the epoch: the run's last/ is that step"
    ddp = {
        n: torch.from_numpy(v).double() for n, v in load_file(str(out / "last" / "model.safetensors")).items()
    }

    exact, magnitude = _float64_reference(cfg, w0, *batch, k)
    for name, g64 in exact.items():
        bound = _fp32_bound(magnitude[name].numpy(), single[name].numpy())
        for label, after in (("one process", single), ("two ranks", ddp)):
            err = np.abs((w0[name] - after[name]).numpy() - g64.numpy())
            assert np.all(err <= bound), (
                f"{label}: {name} off by up to {(err - bound).max():.3g} beyond the bound"
            )
