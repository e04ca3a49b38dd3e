"""`MaxPool2x2`: `nn.MaxPool2d(2)` with a cheaper training kernel on the CPU, the same numbers.

torch's CPU max-pool keeps an int64 index per output for its backward, and the backward zero-fills the
input's whole gradient before it scatters into it. In a bf16 training step of cnn-dropout (batch 128, 2 cores
of an Intel Xeon) the three pools' forward and backward took ~2.9 ms, timed one pool at a time, of a ~13 ms
step: far above what their bytes cost (a 5.5 MB copy takes ~0.24 ms). The compiled kernel (`kernels.py`) keeps one byte per output, which of the window's four
elements won, and its backward writes every input gradient once. It chooses as torch does
(the first maximum of a tie, a NaN over any number), so outputs and gradients are torch's bit for bit
(tests/models/test_pool.py holds them equal, ties and NaNs included).

The kernel runs where it applies: a CPU tensor in channels_last memory (the engine's layout on the CPU),
bf16 or float32, that needs a gradient, outside tracing and torch.compile. Everything else (evaluation,
ONNX export, CUDA, a contiguous tensor, an install without a C compiler) is `nn.MaxPool2d(2)` itself, so a
model's state dict, its exported graph and its numbers do not depend on where it was trained.

`PoolReluDropoutSequential` (cnn-dropout's stack) goes one further where a pool is followed by a ReLU and a
`Dropout`: the three train as one kernel, one pass and one code byte per output, with the numbers of the
three run one after another (tests/models/test_pool_relu_dropout.py). In one process, alternating 4-step
windows, the cnn-dropout step took 0.929 of the unfused time in bf16 and 0.951 in float32 (2-core Intel
Xeon).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashiondist.models import kernels
from fashiondist.models.layers import Dropout


def uses_kernel(x: Tensor) -> bool:
    """Whether `MaxPool2x2` pools `x` with the compiled kernel: in training (a gradient wanted), a 4-d tensor
    in channels_last memory of at least 2 x 2 pixels that `kernels.eager_cpu` accepts."""
    return (
        x.requires_grad
        and torch.is_grad_enabled()
        and x.dim() == 4
        and x.shape[2] >= 2
        and x.shape[3] >= 2
        and x.is_contiguous(memory_format=torch.channels_last)
        and kernels.eager_cpu(x)
    )


class _Pool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001 - autograd's context
        n, c, h, w = x.shape
        out = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype, memory_format=torch.channels_last)
        code = torch.empty((n, h // 2, w // 2, c), dtype=torch.uint8)
        kernels.compiled().pool_forward(
            x.data_ptr(), out.data_ptr(), code.data_ptr(), n, h, w, c, x.dtype == torch.bfloat16
        )
        ctx.save_for_backward(code)
        ctx.input_shape = (n, c, h, w)
        ctx.dtype = x.dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        (code,) = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        grad = grad.to(ctx.dtype).contiguous(memory_format=torch.channels_last)
        grad_in = torch.empty(ctx.input_shape, dtype=ctx.dtype, memory_format=torch.channels_last)
        size = grad_in.element_size()
        kernels.compiled().pool_backward(
            grad.data_ptr(), code.data_ptr(), grad_in.data_ptr(), n, h, w, c, size
        )
        return grad_in


class MaxPool2x2(nn.MaxPool2d):
    """2x2 max-pooling with stride 2 (floor): `nn.MaxPool2d(2)`, trained through the compiled kernel where it
    applies."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        if uses_kernel(x):
            return _Pool2x2.apply(x)
        return F.max_pool2d(x, 2)


class _PoolReluDropout(torch.autograd.Function):
    """MaxPool2x2, ReLU and `Dropout` in one kernel: one pass and one code byte per output (which of the
    window won, the keep bit, whether the ReLU passes), where the three layers make four passes and keep
    three tensors. The keep bits are the dropout kernel's, drawn from the same seed in the same order, so the
    numbers are those of the three layers run one after another, bit for bit."""

    @staticmethod
    def forward(ctx, x: Tensor, threshold: int, scale: float) -> Tensor:  # noqa: ANN001 - autograd's context
        n, c, h, w = x.shape
        out = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype, memory_format=torch.channels_last)
        code = torch.empty((n, h // 2, w // 2, c), dtype=torch.uint8)
        sizes, bf16 = (n, h, w, c), x.dtype == torch.bfloat16
        pointers = (x.data_ptr(), out.data_ptr(), code.data_ptr())
        seed = kernels.dropout_seed()
        kernels.compiled().pool_relu_dropout_forward(*pointers, *sizes, bf16, threshold, scale, seed)
        ctx.save_for_backward(code)
        ctx.input_shape, ctx.dtype, ctx.scale = (n, c, h, w), x.dtype, scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN001
        (code,) = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        grad = grad.to(ctx.dtype).contiguous(memory_format=torch.channels_last)
        grad_in = torch.empty(ctx.input_shape, dtype=ctx.dtype, memory_format=torch.channels_last)
        pointers = (grad.data_ptr(), code.data_ptr(), grad_in.data_ptr())
        kernels.compiled().pool_relu_dropout_backward(
            *pointers, n, h, w, c, grad_in.element_size(), ctx.scale
        )
        return grad_in, None, None


class PoolReluDropoutSequential(nn.Sequential):
    """`nn.Sequential` that trains each MaxPool2x2, ReLU, Dropout run of its layers as one kernel
    (`_PoolReluDropout`) where the pool's kernel applies; otherwise, and in eval mode, it is `nn.Sequential`.
    The layers stay where they are, so the state dict, the exported graph and the numbers do not change."""

    def forward(self, x: Tensor) -> Tensor:
        layers = list(self)
        i = 0
        while i < len(layers):
            if _fusable(layers, i, x):
                dropout = layers[i + 2]
                x = _PoolReluDropout.apply(x, dropout.threshold, dropout.scale)
                i += 3
            else:
                x = layers[i](x)
                i += 1
        return x


def _fusable(layers: list[nn.Module], i: int, x: Tensor) -> bool:
    if i + 2 >= len(layers) or not isinstance(layers[i], MaxPool2x2):
        return False
    relu, dropout = layers[i + 1], layers[i + 2]
    return (
        type(relu) is nn.ReLU
        and type(dropout) is Dropout
        and dropout.training
        and dropout.threshold > 0
        and uses_kernel(x)
    )
