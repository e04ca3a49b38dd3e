"""Sharpness-aware minimisation (`--sam RHO`, engine/sam.py): the ascent, the exact way back, BatchNorm's
statistics, `sam_start`, and two DDP ranks against one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from launched import REPO, accelerate, free_port, learned_parameters, run_ok

from fashiondist.engine.sam import SharpnessAscent

TINY = ["--batch-size", "64", "--epochs", "1", "--quiet", "--precision", "no"]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )


def _loss(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(x), torch.arange(len(x)) % 3)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_ascent_moves_rho_along_the_gradient_and_restore_is_exact():
    model, x, rho = _model(), torch.randn(16, 6), 0.05
    params = list(model.parameters())
    grads = torch.autograd.grad(_loss(model, x), params)  # the gradient at w (this pass updates BN, too)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    before = _state(model)
    sam = SharpnessAscent(model, rho)
    sam.ascend(lambda m: _loss(m, x))
    moved = [p.detach().double() - before[k].double() for k, p in model.named_parameters()]
    assert torch.sqrt(sum((m**2).sum() for m in moved)) == pytest.approx(rho, rel=1e-5)
    for m, g in zip(moved, grads, strict=True):
        assert torch.allclose(m, rho * g.double() / norm, atol=1e-7)
    assert not torch.equal(model[1].running_mean, before["1.running_mean"])  # the ascent's forward counts
    sam.restore()
    for k, p in model.named_parameters():
        assert torch.equal(p.detach(), before[k])  # bit for bit: not w + e - e


def test_the_descents_forward_leaves_batchnorms_statistics():
    model = _model()
    before = _state(model)
    with SharpnessAscent(model, 0.05).descent():
        _loss(model, torch.randn(16, 6)).backward()
    after = model.state_dict()
    for k in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(after[k], before[k])
    assert model[1].momentum == 0.1  # restored
    _loss(model, torch.randn(16, 6))  # and outside the block they move again
    assert not torch.equal(model.state_dict()["1.running_mean"], before["1.running_mean"])


def test_a_non_finite_gradient_moves_nothing():
    model = _model()
    before = _state(model)
    sam = SharpnessAscent(model, 0.05)
    sam.ascend(lambda m: _loss(m, torch.full((16, 6), float("inf"))))
    for k, p in model.named_parameters():
        assert torch.equal(p.detach(), before[k])
    sam.restore()


def _train(tiny_csv: Path, out: Path, *extra: str, launcher: tuple[str, ...] = (sys.executable, "-m")) -> str:
    cmd = [*launcher, "fashiondist", "train", *TINY, "--data", str(tiny_csv), "--out", str(out), *extra]
    return run_ok(cmd).stderr


def test_sam_changes_training_and_sam_start_keeps_it_to_the_last_steps(tiny_csv, tmp_path):
    # 360 training images in batches of 64: 5 steps. sam_start 0.9 starts SAM at step round(4.5) = 4, the
    # last; 0.99 at round(4.95) = 5, after the run: not at all, so that run is the plain one bit for bit
    model = ("--model", "convnet", "--seed", "3")
    _train(tiny_csv, tmp_path / "plain", *model)
    _train(tiny_csv, tmp_path / "never", *model, "--sam", "0.05", "--set", "sam_start=0.99")
    _train(tiny_csv, tmp_path / "last", *model, "--sam", "0.05", "--set", "sam_start=0.9")
    _train(tiny_csv, tmp_path / "all", *model, "--sam", "0.05")
    plain, never, last, every = (learned_parameters(tmp_path / n) for n in ("plain", "never", "last", "all"))
    assert all(torch.equal(plain[k], never[k]) for k in plain)
    far = {k: (plain[k] - every[k]).abs().max() for k in plain}
    assert max(far.values()) > 1e-3  # SAM's gradients are other gradients
    assert 0 < max((plain[k] - last[k]).abs().max() for k in plain) < max(far.values())
    config = json.loads((tmp_path / "last" / "run.json").read_text())["config"]
    assert config["sam"] == 0.05 and config["sam_start"] == 0.9


@pytest.mark.ddp
def test_two_ranks_take_the_steps_one_process_takes_with_two_micro_batches(tiny_csv, tmp_path):
    # Each rank's ascent uses its own micro-batch's gradient, never all-reduced; one process accumulating the
    # same two micro-batches ascends per micro-batch too, so both take the same steps. cnn has no BatchNorm
    # or dropout, so the two differ by the gradients' summation order only (cf. the student test's 1e-7),
    # while the same steps without SAM end far from both
    model, sam, accumulated = ("--model", "cnn", "--seed", "3"), ("--sam", "0.05"), ("--grad-accum", "2")
    _train(tiny_csv, tmp_path / "plain", *model, *accumulated)
    _train(tiny_csv, tmp_path / "one", *model, *accumulated, *sam)
    config = str(REPO / "launch/accelerate/cpu_ddp.yaml")
    launcher = (*accelerate("--config_file", config, "--main_process_port", str(free_port())), "-m")
    log = _train(tiny_csv, tmp_path / "two", *model, *sam, launcher=launcher)
    assert "32 per device x 1 accumulation x 2 process(es)" in log
    one, two = learned_parameters(tmp_path / "one"), learned_parameters(tmp_path / "two")
    plain = learned_parameters(tmp_path / "plain")
    assert all((one[k] - two[k]).abs().max() < 1e-4 for k in one)
    assert max((one[k] - plain[k]).abs().max() for k in one) > 1e-3
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["ranks_in_sync"] is True
