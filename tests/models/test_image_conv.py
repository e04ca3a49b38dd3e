"""`ImageConv2d`: a first layer's float32 weight and bias gradients from the compiled kernel, as accurate as
the sums allow, independent of the thread count; everywhere else it is `nn.Conv2d`."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fashiondist.models import kernels, layers
from fashiondist.models.layers import ImageConv2d
from fashiondist.models.registry import create_model

CL = torch.channels_last
# The kernel adds at most 27 x 28 products per image into a row sum, 8 image sums into a chunk, then the
# chunks in order: the first-order bound on a float32 sum's error is (additions) x 2**-24 x sum(|terms|).
_ADDITIONS = 28 * 28 + 8 + 64


def _kernel_calls(monkeypatch) -> list[tuple[int, ...]]:
    calls = []
    backward = layers._ImageConvGrad.backward

    def counted(ctx, grad):
        calls.append(tuple(grad.shape))
        return backward(ctx, grad)

    monkeypatch.setattr(layers._ImageConvGrad, "backward", staticmethod(counted))
    return calls


def _grads(conv: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    conv.zero_grad(set_to_none=True)
    conv(x).backward(grad)
    return conv.weight.grad.clone(), None if conv.bias is None else conv.bias.grad.clone()


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(128, 1, 28, 28), (5, 1, 9, 13), (1, 1, 3, 3)])
def test_gradients_are_the_exact_sums_within_their_rounding(kernel_isa, monkeypatch, padding, bias, shape):
    """Against float64: the float32 rounding bound of the sums, derived above, and never worse than 4x
    torch's own error (checked where the bound is loose)."""
    calls = _kernel_calls(monkeypatch)
    torch.manual_seed(sum(shape) + padding)
    conv = ImageConv2d(1, 32, 3, padding=padding, bias=bias).to(memory_format=CL)
    x = torch.randn(shape) * 3 + 1
    out_shape = F.conv2d(x, conv.weight, None, 1, padding).shape
    grad = torch.randn(out_shape).contiguous(memory_format=CL)
    got_w, got_b = _grads(conv, x, grad)
    assert calls == [tuple(out_shape)]
    assert conv.weight.grad.stride() == conv.weight.stride()  # what DDP's gradient buckets expect
    exact = _float64_grads(grad, x, conv.weight, padding, bias)
    magnitude = _float64_grads(grad.abs(), x.abs(), conv.weight, padding, bias)  # the sums of |terms|
    bound_w = _ADDITIONS * 2**-24 * magnitude[1] + 1e-30
    assert ((got_w.double() - exact[1]).abs() <= bound_w).all()
    if bias:
        assert ((got_b.double() - exact[2]).abs() <= _ADDITIONS * 2**-24 * magnitude[2] + 1e-30).all()
    else:
        assert got_b is None


def _float64_grads(grad, x, weight, padding: int, bias: bool) -> tuple[torch.Tensor, ...]:
    """torch's (grad_input, grad_weight, grad_bias) of the convolution, in float64."""
    pad, one = [padding] * 2, [1, 1]
    wanted = [False, True, bias]
    return torch.ops.aten.convolution_backward(
        grad.double(), x.double(), weight.double(), [weight.shape[0]], one, pad, one, False, [0, 0], 1, wanted
    )


def test_the_result_does_not_depend_on_the_thread_count(kernel_isa):
    kernel = kernels.compiled()
    if kernels.kernel_threads() < 2:
        pytest.skip("one thread (or torch's OpenMP runtime not found): there is no split to compare")
    conv = ImageConv2d(1, 32, 3)
    x, grad = torch.randn(100, 1, 28, 28), torch.randn(100, 32, 26, 26).contiguous(memory_format=CL)
    try:
        kernel.use_threads(1)
        one = _grads(conv, x, grad)
        kernel.use_threads(0)
        split = _grads(conv, x, grad)
    finally:
        kernel.use_threads(0)
    assert torch.equal(one[0], split[0]) and torch.equal(one[1], split[1])


def test_the_forward_is_torchs_and_the_state_dict_nn_conv2ds(kernel_isa):
    torch.manual_seed(0)
    conv = ImageConv2d(1, 32, 3, padding=1)
    plain = nn.Conv2d(1, 32, 3, padding=1)
    plain.load_state_dict(conv.state_dict())
    assert list(conv.state_dict()) == list(plain.state_dict())
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(conv(x), plain(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(conv(x), plain(x))


def test_what_the_kernel_does_not_take_is_nn_conv2d(kernel_isa, monkeypatch):
    """bf16 autocast (oneDNN measured as fast there), eval, no gradient, an input that needs one, frozen
    weights, a width not a multiple of 16, other strides and paddings, several input channels."""
    calls = _kernel_calls(monkeypatch)
    x = torch.randn(2, 1, 12, 12)
    cases = [
        (ImageConv2d(1, 32, 3), x, "autocast"),
        (ImageConv2d(1, 32, 3).eval(), x, None),
        (ImageConv2d(1, 32, 3), x.clone().requires_grad_(), None),
        (ImageConv2d(1, 24, 3), x, None),
        (ImageConv2d(1, 32, 3, stride=2), x, None),
        (ImageConv2d(1, 32, 3, padding=2), x, None),
        (ImageConv2d(1, 32, 5), x, None),
        (ImageConv2d(2, 32, 3), torch.randn(2, 2, 12, 12), None),
        (ImageConv2d(1, 32, 3).requires_grad_(False), x, None),
    ]
    for conv, inp, mode in cases:
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
        plain.load_state_dict(conv.state_dict())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            out, ref = conv(inp), plain(inp)
        assert torch.equal(out, ref)
        if out.requires_grad:
            out.float().sum().backward()
    with torch.no_grad():
        ImageConv2d(1, 32, 3).train()(x)
    assert calls == []


@pytest.mark.parametrize("name", ["cnn", "cnn-dropout", "convnet", "autoencoder"])
def test_a_float32_training_step_changes_only_the_first_layers_rounding(monkeypatch, sample_batch, name):
    """The whole model as the engine trains it in float32: the same loss, every other gradient bit for bit, and
    the first layer's the same gradient as oneDNN's: within 1e-3 of its largest element, where a wrong one
    (taps transposed, a bias sum missed) is off by the order of that element and two roundings of the same
    sum by ~1e-6 of it (the bound in the first test)."""
    images, labels = sample_batch
    calls = _kernel_calls(monkeypatch)
    torch.manual_seed(0)
    model = create_model(name, 10).to(memory_format=CL).train()
    plain = copy.deepcopy(model)
    firsts = [m for m in plain.modules() if type(m) is ImageConv2d]
    assert len(firsts) == 1, name
    firsts[0].__class__ = nn.Conv2d
    results = []
    for m in (model, plain):
        torch.manual_seed(1)
        loss, _ = m(images, targets=labels)
        loss.backward()
        results.append((loss.detach(), [(n, p.grad) for n, p in m.named_parameters()]))
    assert len(calls) == 1
    assert torch.equal(results[0][0], results[1][0])
    first = {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[0] in _first_name(model)}
    for (n, got), (_, want) in zip(results[0][1], results[1][1], strict=True):
        if n in first:
            assert (got - want).abs().max() <= 1e-3 * want.abs().max(), n
        else:
            assert torch.equal(got, want), n


def _first_name(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if type(m) is ImageConv2d}


def test_the_kernel_refuses_shapes_it_cannot_take(kernel_isa):
    kernel = kernels.compiled()
    with pytest.raises(ValueError, match="multiple of 16"):
        kernel.conv1_weight_grad(0, 0, 0, 0, 1, 28, 28, 24, 0)
    with pytest.raises(ValueError, match="padding 0 or 1"):
        kernel.conv1_weight_grad(0, 0, 0, 0, 1, 28, 28, 32, 2)
