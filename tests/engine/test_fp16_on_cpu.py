"""The fp16 path (autocast, GradScaler, steps the scaler skips, non-finite losses) on the CPU, through the
real engine: `PreparedTraining.step` and `Trainer`.

accelerate leaves fp16 off on the CPU (no GradScaler, no autocast; `--precision fp16` refuses there for that
reason), so the tests hand the engine an Accelerator with exactly what accelerate turns on for a CUDA device:
native fp16 autocast and a `torch.amp.GradScaler` for the device type (accelerate's own `get_grad_scaler`
builds the same). The engine takes its Accelerator as an argument (`prepare_training`, `Trainer`); nothing in
it knows it is under test.

A first scale of 2^24 makes the first step overflow on any CPU: the loss's gradient on a logit is up to
(1 - 1/K) / batch, times 2^24 that is over 2^17 at batch 64, beyond fp16's largest number (65504), so the
fp16 logits' gradient is inf. The scaler then halves its scale until the gradients fit.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import GradScalerKwargs
from accelerate_state import reset_accelerate
from rich.console import Console

from fashiondist.config import Schedule, TrainConfig
from fashiondist.engine.prepared import TrainTally, prepare_training
from fashiondist.engine.progress import TrainProgress
from fashiondist.engine.trainer import Trainer
from fashiondist.errors import FashiondistError

OVERFLOWING_SCALE = 2.0**24  # see the module docstring
NO_GROWTH = 10_000  # growth_interval: the scale only comes down within these short runs


@pytest.fixture
def fp16_cpu():
    """A factory of CPU Accelerators with fp16 autocast and a GradScaler (accelerate's process state is reset
    around each, as accelerate's own tests do, so other precisions before and after are unaffected)."""

    def make(init_scale: float = OVERFLOWING_SCALE) -> Accelerator:
        reset_accelerate()
        scaling = GradScalerKwargs(init_scale=init_scale, growth_interval=NO_GROWTH)
        acc = Accelerator(cpu=True, mixed_precision="fp16", kwargs_handlers=[scaling])
        assert acc.scaler is None and not acc.native_amp, "accelerate turned fp16 on for the CPU by itself"
        acc.native_amp = True  # accelerate's switch for autocast in prepared models and `autocast()`
        acc.scaler = torch.amp.GradScaler("cpu", **scaling.to_kwargs())
        return acc

    yield make
    reset_accelerate()


@pytest.fixture(scope="module")
def small(sample):
    """1,200 real sample images (the first ones: every class is there), a Dataset like a source's."""
    return dataclasses.replace(
        sample, images=sample.images[:1200], labels=sample.labels[:1200], ids=sample.ids[:1200]
    )


def _cfg(tmp_path: Path, **overrides) -> TrainConfig:
    base = dict(model="cnn", batch_size=64, epochs=1, ema=0.9, eval_batch_size=256, quiet=True, seed=0)
    return TrainConfig(**{**base, "out": str(tmp_path / "run"), **overrides})


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_skipped_step_changes_no_weight_and_no_ema(fp16_cpu, small):
    acc = fp16_cpu()
    engine = prepare_training(_cfg(Path(".")), acc, small.images, small.labels, small.num_classes)
    dtypes = []
    engine.raw_model.net[-1].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    weights, ema = _snapshot(engine.raw_model), _snapshot(engine.ema.module)
    tally = TrainTally(acc.device, 0)
    windows = engine.batches.epoch(0, 0)

    assert engine.step(windows, 0, tally) is False  # 2^24 overflows fp16 gradients on any CPU
    assert dtypes == [torch.float16], "the forward ran under fp16 autocast"
    assert acc.scaler.get_scale() == OVERFLOWING_SCALE / 2
    assert _same(weights, _snapshot(engine.raw_model)) and _same(ema, _snapshot(engine.ema.module))
    assert engine.optimizer.state_dict()["state"] == {}, "no momentum buffer: the optimizer never stepped"
    assert int(tally.first_bad) == -1, "an overflow in the gradients is not a non-finite loss"

    skipped = 1
    while not engine.step(windows, 0, tally):  # the same step 0 until the scale fits
        skipped += 1
        assert skipped < 16
    assert acc.scaler.get_scale() == OVERFLOWING_SCALE / 2**skipped
    assert not _same(weights, _snapshot(engine.raw_model)) and not _same(ema, _snapshot(engine.ema.module))


def _trainer(cfg: TrainConfig, acc: Accelerator, data) -> Trainer:
    return Trainer(cfg, acc, data, TrainProgress(enabled=True, quiet=True, console=Console(stderr=True)))


def test_skipped_steps_do_not_advance_the_schedule_and_resume_keeps_the_scale(fp16_cpu, small, tmp_path):
    cfg = _cfg(tmp_path, epochs=1, grad_clip=1.0)  # clipping unscales the gradients first (scaler.unscale_)
    trainer = _trainer(cfg, fp16_cpu(), small)
    windows = trainer.prepared.batches.steps_per_epoch
    trainer.run()
    scale = trainer.acc.scaler.get_scale()
    assert scale < OVERFLOWING_SCALE

    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["skipped_steps"] >= 1 and state["step"] == windows - summary["skipped_steps"] >= 1
    assert record["step"] == state["step"] and np.isfinite(record["train_loss"])
    # The learning rate of the last step that ran, by hand from the linear schedule's definition (a warm-up
    # over warmup_fraction of the steps, then a linear decay to 0): a skipped step would have moved it on.
    assert cfg.schedule is Schedule.LINEAR and trainer.prepared.total_steps == windows
    warm = round(cfg.warmup_fraction * windows)

    def linear(k: int) -> float:
        return cfg.lr * (k + 1) / warm if k < warm else cfg.lr * (1.0 - (k - warm) / (windows - warm))

    # the same float64 expression as the schedule's, up to the order of two roundings: within 4 ulps
    assert record["lr"] == pytest.approx(linear(state["step"] - 1), rel=4 * 2.0**-53)
    assert record["lr"] != pytest.approx(linear(windows - 1), rel=4 * 2.0**-53)
    assert state["scaler"]["scale"] == scale

    # Resume into an Accelerator whose scaler starts elsewhere: the saved scale wins.
    resumed = _trainer(dataclasses.replace(cfg, epochs=2, resume="auto"), fp16_cpu(init_scale=2.0**4), small)
    assert resumed.acc.scaler.get_scale() == scale and resumed.state.step == state["step"]
    resumed.run()
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_a_non_finite_loss_under_fp16_stops_with_the_step(fp16_cpu, small, tmp_path):
    cfg = _cfg(tmp_path, lr=1e30, ema=0.0)
    trainer = _trainer(cfg, fp16_cpu(init_scale=2.0**8), small)
    with pytest.raises(FashiondistError, match=r"cnn: non-finite loss at optimizer step \d+ \(epoch 1\)"):
        trainer.run()
    assert not (tmp_path / "run" / "last").exists()
