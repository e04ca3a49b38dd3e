"""`PoolReluDropoutSequential`: a MaxPool2x2, ReLU, Dropout run trained as one kernel gives the numbers of the
three layers run one after another, bit for bit, and changes nothing outside CPU training."""

from __future__ import annotations

import pytest
import torch
from test_pool import _hostile, _same
from torch import nn

from fashiondist.models import pool
from fashiondist.models.cnn import DropoutCNN
from fashiondist.models.layers import Dropout
from fashiondist.models.pool import MaxPool2x2, PoolReluDropoutSequential

CL = torch.channels_last


def _fused_calls(monkeypatch) -> list[tuple[int, ...]]:
    calls = []
    forward = pool._PoolReluDropout.forward

    def counted(ctx, x, *args):
        calls.append(tuple(x.shape))
        return forward(ctx, x, *args)

    monkeypatch.setattr(pool._PoolReluDropout, "forward", staticmethod(counted))
    return calls


def _both(layers: list[nn.Module], x: torch.Tensor, grad_seed: int = 1):
    """Output and input gradient of the layers as PoolReluDropoutSequential and as nn.Sequential, each from the
    same generator state (the same dropout masks)."""
    results = []
    for stack in (PoolReluDropoutSequential(*layers), nn.Sequential(*layers)):
        leaf = x.detach().clone().requires_grad_()
        torch.manual_seed(7)
        out = stack(leaf)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out.dtype)
        out.backward(grad)
        results.append((out, leaf.grad))
    return results


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("p", [0.2, 0.4, 0.5, 0.9])
@pytest.mark.parametrize(
    "shape", [(4, 32, 26, 26), (3, 64, 13, 13), (2, 128, 6, 6), (3, 33, 7, 5), (1, 3, 2, 3)]
)
def test_fused_is_the_three_layers_bit_for_bit(kernel_isa, monkeypatch, dtype, p, shape):
    """Hostile values (ties, signed zeros, infinities, NaNs: the ReLU lets -0 and NaN through, and its
    backward passes a NaN output's gradient), odd sizes, several rates."""
    calls = _fused_calls(monkeypatch)
    x = _hostile(shape, dtype, seed=sum(shape))
    (out, grad), (ref, ref_grad) = _both([MaxPool2x2(), nn.ReLU(), Dropout(p)], x)
    assert calls == [shape]
    assert out.dtype == dtype and out.is_contiguous(memory_format=CL)
    assert _same(out, ref)
    assert grad.dtype == dtype and grad.is_contiguous(memory_format=CL)
    assert _same(grad, ref_grad)


def test_a_batch_slice_and_a_contiguous_output_gradient(kernel_isa, monkeypatch):
    calls = _fused_calls(monkeypatch)
    x = _hostile((6, 16, 10, 10), torch.bfloat16, seed=3)[2:5]
    assert x.storage_offset() > 0
    results = []
    for stack in (PoolReluDropoutSequential, nn.Sequential):
        leaf = x.detach().requires_grad_()  # a view into the batch, not a copy
        torch.manual_seed(2)
        out = stack(MaxPool2x2(), nn.ReLU(), Dropout(0.3))(leaf)
        out.backward(
            torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(out.dtype).contiguous()
        )
        results.append((out, leaf.grad))
    assert len(calls) == 1
    assert _same(results[0][0], results[1][0]) and _same(results[0][1], results[1][1])


def test_what_is_not_fused_runs_layer_by_layer(kernel_isa, monkeypatch):
    """Eval mode, no gradient, a zero rate, NCHW memory, other layers between, a run at the end: nn.Sequential's
    numbers, and the fused kernel never called."""
    calls = _fused_calls(monkeypatch)
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=CL)
    cases = [
        (PoolReluDropoutSequential(MaxPool2x2(), nn.ReLU(), Dropout(0.5)).eval(), x.requires_grad_()),
        (PoolReluDropoutSequential(MaxPool2x2(), nn.ReLU(), Dropout(0.5)), x.detach()),
        (PoolReluDropoutSequential(MaxPool2x2(), nn.ReLU(), Dropout(0.0)), x.detach().requires_grad_()),
        (
            PoolReluDropoutSequential(MaxPool2x2(), nn.ReLU(), Dropout(0.5)),
            x.detach().contiguous().requires_grad_(),
        ),
        (PoolReluDropoutSequential(MaxPool2x2(), nn.GELU(), Dropout(0.5)), x.detach().requires_grad_()),
        (PoolReluDropoutSequential(MaxPool2x2(), nn.ReLU()), x.detach().requires_grad_()),
        (PoolReluDropoutSequential(MaxPool2x2(), nn.ReLU(), nn.Dropout(0.5)), x.detach().requires_grad_()),
    ]
    for stack, inp in cases:
        torch.manual_seed(3)
        got = stack(inp)
        torch.manual_seed(3)
        want = nn.Sequential(*stack)(inp)
        assert torch.equal(got, want), stack
    assert calls == []


def test_cnn_dropout_keeps_its_state_dict_and_graph(kernel_isa, monkeypatch):
    """The fused container adds no parameters and moves none: the state dict's keys are nn.Sequential's, so
    earlier checkpoints load; in eval mode the model is the plain stack of layers."""
    calls = _fused_calls(monkeypatch)
    model = DropoutCNN(10).to(memory_format=CL)
    plain = nn.Sequential(*model.net)
    assert list(model.net.state_dict()) == list(plain.state_dict())
    model.train()
    model(torch.randn(4, 1, 28, 28).contiguous(memory_format=CL)).sum().backward()
    assert calls == [(4, 32, 26, 26), (4, 64, 13, 13), (4, 128, 6, 6)]
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.net(x), plain(x))
    assert len(calls) == 3


def test_the_fused_kernel_refuses_bad_arguments(kernel_isa):
    kernel = pool.kernels.compiled()
    with pytest.raises(ValueError, match="height and width >= 2"):
        kernel.pool_relu_dropout_forward(0, 0, 0, 1, 1, 4, 4, True, 51, 1.25, 1)
    with pytest.raises(ValueError, match="threshold <= 255"):
        kernel.pool_relu_dropout_forward(0, 0, 0, 1, 4, 4, 4, True, 256, 1.25, 1)
    with pytest.raises(ValueError, match="itemsize must be 2 or 4"):
        kernel.pool_relu_dropout_backward(0, 0, 0, 1, 4, 4, 4, 8, 1.25)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_call_split_over_threads_writes_what_one_thread_writes(kernel_isa, monkeypatch, dtype):
    """Large calls are split by images (dropout: by blocks) over torch's OpenMP threads; every kernel gives the
    same bits split or not. 33 channels of 7 x 5 put a part's first dropout byte mid-word (99 outputs an
    image), and the sizes are past the split's threshold."""
    kernel = pool.kernels.compiled()
    if pool.kernels.kernel_threads() < 2:
        pytest.skip("one thread (or torch's OpenMP runtime not found): there is no split to compare")
    shape = (512, 33, 7, 5)
    x = _hostile(shape, dtype, seed=11)
    dropout_in = _hostile((64, 37, 13, 11), dtype, seed=12)
    results = []
    try:
        for threads in (1, 0):
            kernel.use_threads(threads)
            for layers in ([MaxPool2x2()], [MaxPool2x2(), nn.ReLU(), Dropout(0.4)], [Dropout(0.3)]):
                inp = dropout_in if len(layers) == 1 and isinstance(layers[0], Dropout) else x
                results.append(_both(layers, inp)[0])
    finally:
        kernel.use_threads(0)
    half = len(results) // 2
    for (out, grad), (ref, ref_grad) in zip(results[:half], results[half:], strict=True):
        assert _same(out, ref) and _same(grad, ref_grad)
    with pytest.raises(ValueError, match="use_threads"):
        kernel.use_threads(-1)
