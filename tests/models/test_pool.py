"""`MaxPool2x2`: the compiled training kernel gives torch's max-pool outputs and gradients bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fashiondist.models import kernels, pool
from fashiondist.models.pool import MaxPool2x2, uses_kernel
from fashiondist.models.registry import create_model

CL = torch.channels_last


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (-0.0 is not 0.0), except that a NaN equals any NaN: torch's own bf16 paths spell a
    NaN 0x7FC0 or 0xFFFF depending on the CPU's vector width, and its pool may rewrite one as the other."""
    nan = a.isnan()
    if not torch.equal(nan, b.isnan()):
        return False
    bits = torch.int16 if a.element_size() == 2 else torch.int32
    return torch.equal(
        a.detach().masked_fill(nan, 0).contiguous().view(bits),
        b.detach().masked_fill(nan, 0).contiguous().view(bits),
    )


def _hostile(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Small integers (ties in almost every window, zero-padded ReLU outputs look like this), signed zeros,
    -inf everywhere in some windows, a few +inf and NaNs; then random values in the rest."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, shape, generator=g).float()
    u = torch.rand(shape, generator=g)
    x = torch.where(u < 0.05, torch.full_like(x, float("nan")), x)
    x = torch.where((u >= 0.05) & (u < 0.10), torch.full_like(x, float("-inf")), x)
    x = torch.where((u >= 0.10) & (u < 0.12), torch.full_like(x, float("inf")), x)
    x = torch.where((u >= 0.12) & (u < 0.20), torch.full_like(x, -0.0), x)
    x = torch.where(u >= 0.6, torch.randn(shape, generator=g), x)
    x[0, :, :2, :2] = float("-inf")  # a whole window of -inf: torch takes its first element
    return x.to(dtype).contiguous(memory_format=CL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "shape",
    [(4, 32, 26, 26), (3, 64, 13, 13), (2, 128, 6, 6), (2, 1, 28, 28), (3, 33, 7, 5), (1, 3, 2, 3)],
)
def test_forward_and_backward_are_torchs_bit_for_bit(kernel_isa, dtype, shape):
    x = _hostile(shape, dtype, seed=sum(shape)).requires_grad_()
    ref_x = x.detach().clone().requires_grad_()
    assert uses_kernel(x)
    out = MaxPool2x2()(x)
    ref = F.max_pool2d(ref_x, 2)
    assert out.shape == ref.shape and out.dtype == dtype and out.is_contiguous(memory_format=CL)
    assert _same(out, ref)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out.backward(grad)
    ref.backward(grad)
    assert x.grad.dtype == dtype
    assert _same(x.grad, ref_x.grad)


def test_a_slice_of_a_batch_and_a_contiguous_output_gradient(kernel_isa):
    """An input that starts inside its storage (a batch slice) and an output gradient in NCHW order."""
    whole = _hostile((6, 16, 10, 10), torch.bfloat16, seed=3)
    x = whole[2:5].detach().requires_grad_()
    ref_x = x.detach().clone().requires_grad_()
    assert x.storage_offset() > 0 and uses_kernel(x)
    out, ref = MaxPool2x2()(x), F.max_pool2d(ref_x, 2)
    assert _same(out, ref)
    grad = torch.randn(ref.shape).to(torch.bfloat16).contiguous()  # NCHW, not channels_last
    out.backward(grad)
    ref.backward(grad)
    assert _same(x.grad, ref_x.grad)


def test_where_the_kernel_does_not_apply_it_is_torchs_pool(kernel_isa):
    x = torch.randn(2, 8, 6, 6)
    assert not uses_kernel(x)  # no gradient wanted
    assert not uses_kernel(x.requires_grad_().contiguous())  # NCHW with several channels
    assert not uses_kernel(x.to(torch.float64).contiguous(memory_format=CL).requires_grad_())
    assert not uses_kernel(torch.randn(2, 8, 1, 6, requires_grad=True).contiguous(memory_format=CL))
    cl = x.detach().contiguous(memory_format=CL).requires_grad_()
    with torch.no_grad():
        assert not uses_kernel(cl)
        assert torch.equal(MaxPool2x2()(cl), F.max_pool2d(cl, 2))
    assert isinstance(MaxPool2x2(), torch.nn.MaxPool2d) and MaxPool2x2().kernel_size == 2


def test_without_the_extension_the_models_pool_with_torch(monkeypatch):
    monkeypatch.setattr(kernels, "compiled", lambda: None)
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=CL).requires_grad_()
    assert not uses_kernel(x)
    out = MaxPool2x2()(x)
    assert torch.equal(out, F.max_pool2d(x.detach(), 2))
    out.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("name", ["cnn-dropout", "convnet", "resnet9", "autoencoder"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_training_step_has_the_same_gradients_with_and_without_the_kernel(
    monkeypatch, sample_batch, name, dtype
):
    """The whole model, as the engine trains it on the CPU (channels_last, autocast for bf16): identical loss
    and parameter gradients with torch's pool (the dropout kernel in both, the same masks). cnn-dropout's
    pools run fused with their ReLU and dropout (`PoolReluDropoutSequential`), the others' on their own."""
    images, labels = sample_batch
    calls = []
    for kernel in (pool._Pool2x2, pool._PoolReluDropout):

        def counted(ctx, x, *args, kernel_forward=kernel.forward):
            calls.append(x.shape)
            return kernel_forward(ctx, x, *args)

        monkeypatch.setattr(kernel, "forward", staticmethod(counted))

    def step(with_kernel: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = create_model(name, 10).to(memory_format=CL).train()
        with monkeypatch.context() as m:
            if not with_kernel:
                m.setattr(pool, "uses_kernel", lambda x: False)
            torch.manual_seed(1)  # the same dropout masks
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss, _ = model(images, targets=labels)
            loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    loss, grads = step(True)
    assert calls, f"{name}: the kernel never ran"
    ref_loss, ref_grads = step(False)
    assert torch.equal(loss, ref_loss)
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.equal(got, want)


def test_the_kernel_refuses_sizes_it_cannot_pool(kernel_isa):
    kernel = kernels.compiled()
    with pytest.raises(ValueError, match="height and width >= 2"):
        kernel.pool_forward(0, 0, 0, 1, 1, 4, 4, True)
    with pytest.raises(ValueError, match="itemsize must be 2 or 4"):
        kernel.pool_backward(0, 0, 0, 1, 4, 4, 4, 8)
