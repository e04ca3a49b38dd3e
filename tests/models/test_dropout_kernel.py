"""`Dropout` through the compiled kernel: its rate and scale, its seeding, its gradient, its layouts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from extensions import require_built

from fashiondist.models import kernels
from fashiondist.models.layers import Dropout

CL = torch.channels_last


def _through_kernel(monkeypatch) -> list[int]:
    """Count the kernel's forward calls (so a test knows the kernel, not the fallback, ran)."""
    calls: list[int] = []
    real = kernels.compiled()

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def dropout_forward(self, *args):
            calls.append(args[3])
            return real.dropout_forward(*args)

    monkeypatch.setattr(kernels, "compiled", lambda: Counting())
    return calls


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("p", [0.2, 0.4, 0.5])
def test_rate_scale_and_rounding(kernel_isa, monkeypatch, dtype, p):
    calls = _through_kernel(monkeypatch)
    drop = Dropout(p)
    torch.manual_seed(0)
    x = (torch.rand(64, 32, 13, 13) * 4 - 2).to(dtype).contiguous(memory_format=CL)
    y = drop(x)
    assert calls == [x.numel()]
    assert y.dtype == dtype and y.is_contiguous(memory_format=CL)
    kept = y != 0
    # 346,112 draws: one standard error of the kept fraction is <= 0.00085, so 0.005 is ~6 of them
    assert abs(kept.float().mean().item() - (1 - drop.threshold / 256)) < 0.005
    # a kept element is x times the exact scale, rounded once to the dtype
    want = (x.float() * drop.scale).to(dtype)
    assert torch.equal(y[kept], want[kept])


def test_the_seed_comes_from_torchs_generator(kernel_isa):
    drop = Dropout(0.4)
    x = torch.ones(8, 16, 10, 10).contiguous(memory_format=CL)
    torch.manual_seed(3)
    a = drop(x)
    b = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), a)  # the same seed, the same mask
    assert not torch.equal(a, b)  # the next draw, another mask
    torch.manual_seed(3)
    torch.default_generator.manual_seed(3)
    assert torch.equal(drop(x.bfloat16().contiguous(memory_format=CL)) != 0, a != 0)  # dtype-independent


def test_masks_look_uniform_across_positions(kernel_isa):
    """Every position of a word (the kernel takes 8 bytes from each 64-bit draw) drops at the same rate,
    and neighbouring elements are not correlated."""
    torch.manual_seed(0)
    y = Dropout(0.5)(torch.ones(2**20)) != 0
    by_byte = y.view(-1, 8).float().mean(0)
    # 131,072 draws per byte position (s.e. 0.0014) and 2^20 - 1 pairs (s.e. 0.0004): 0.01 is 7 and 23 s.e.
    assert (by_byte - 0.5).abs().max() < 0.01
    pairs = (y[:-1] & y[1:]).float().mean().item()
    assert abs(pairs - 0.25) < 0.01


@pytest.mark.parametrize("shape, layout", [((32, 64), None), ((16, 8, 6, 6), CL), ((16, 8, 6, 6), None)])
def test_backward_is_the_mask_times_the_scale(kernel_isa, monkeypatch, shape, layout):
    calls = _through_kernel(monkeypatch)
    drop = Dropout(0.2)
    x = torch.randn(shape)
    x = (x.contiguous(memory_format=layout) if layout else x).requires_grad_()
    y = drop(x)
    assert calls
    g = torch.randn(shape)  # contiguous, whatever x's layout
    y.backward(g)
    keep = (y != 0).float()
    assert torch.equal(x.grad, g * keep * drop.scale)


def test_inf_and_nan_follow_torchs_product(kernel_isa):
    """x times 0 or the scale, as `x * mask` in torch: a dropped inf or NaN is NaN, a dropped -1 is -0."""
    x = torch.tensor([float("inf"), float("nan"), -1.0] * 4000)
    torch.manual_seed(1)
    kept = Dropout(0.5)(torch.ones_like(x)) != 0  # the same seed, the same mask
    torch.manual_seed(1)
    y = Dropout(0.5)(x)
    inf, minus_one = x.isinf(), x == -1.0
    assert torch.all(y[kept & inf] == float("inf")) and torch.all(y[~kept & inf].isnan())
    assert torch.all(y[x.isnan()].isnan())
    assert torch.all(y[kept & minus_one] == -2.0)
    dropped = y[~kept & minus_one]
    assert torch.all(dropped == 0) and torch.all(torch.signbit(dropped))


def test_strided_input_and_the_missing_extension_use_torch_ops(kernel_isa, monkeypatch):
    calls = _through_kernel(monkeypatch)
    drop = Dropout(0.4)
    torch.manual_seed(0)
    y = drop(torch.ones(256, 384).t())  # neither contiguous nor channels_last
    # kept 1 - 102/256 = 0.6016; 98,304 draws (s.e. 0.0016) and 346,112 below (s.e. 0.0008)
    assert not calls and abs((y != 0).float().mean().item() - 0.6) < 0.03
    monkeypatch.setattr(kernels, "compiled", lambda: None)
    y = drop(torch.ones(64, 32, 13, 13).contiguous(memory_format=CL))
    assert abs((y != 0).float().mean().item() - 0.6) < 0.01
    assert torch.equal(drop.eval()(y), y)


def test_every_build_draws_the_same_mask_and_rounds_alike(kernel_isa):
    """A run's masks do not depend on the CPU's vector width: each build against the baseline's."""
    built = kernels.compiled()
    x = torch.randn(4, 24, 13, 13).to(torch.bfloat16).contiguous(memory_format=CL).requires_grad_()
    outputs = []
    for isa in (kernel_isa, "baseline"):
        built.use_isa(isa)
        torch.manual_seed(5)
        y = Dropout(0.4)(x)
        y.backward(torch.ones_like(y))
        outputs.append((y.detach(), x.grad.clone()))
        x.grad = None
    built.use_isa(kernel_isa)
    (y, gx), (y_base, gx_base) = outputs
    assert torch.equal(y, y_base) and torch.equal(gx, gx_base)


@pytest.mark.parametrize("hold, want", [("avx2", {"avx2", "baseline"}), ("default", {"baseline"})])
def test_the_kernels_follow_atens_instruction_set_hold(hold, want):
    """Under ATEN_CPU_CAPABILITY (how the suite stands in for a smaller CPU) the kernels hold back too."""
    require_built(kernels.compiled(), "fashiondist.models._kernels")
    code = "from fashiondist.models.kernels import kernel_isa; print(kernel_isa())"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": hold}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.strip() in want
