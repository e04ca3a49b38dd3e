"""Small building blocks shared by the model families."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashiondist.errors import InputError
from fashiondist.models import kernels


class Dropout(nn.Module):
    """Inverted dropout with a cheaper mask than `nn.Dropout` on the CPU; the identity in eval mode.

    torch's CPU dropout draws its mask with `bernoulli_`, one generator call per element: ~8.8 ms of a
    20.9 ms bf16 training step of cnn-dropout (batch 128, 2 cores). Here a random byte below `round(256 p)`
    drops its element, so the drop probability is p rounded to 1/256 and the scale is exact for it
    (E[output] = x). Where the CPU kernels are built (`kernels.py`), one pass makes the bytes (splitmix64 of a
    seed drawn from torch's CPU generator, so `torch.manual_seed` governs them), the mask and the output, and
    the backward is one pass over a saved byte mask: forward + backward of [128, 32, 13, 13] bf16 in ~0.4 ms
    against ~1.1 ms for the torch ops below. Without them, `random_bytes_like` takes 8 bytes per 64-bit draw
    of torch's generator and torch ops build the mask: the same distribution, other draws. Either way the
    output keeps x's dtype and memory format (bf16, channels_last). On GPUs torch's fused dropout is already
    fast and is used as is. In eval mode the module returns its input, so an exported graph has no dropout
    node.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise InputError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(256 * p)  # drop where the random byte < threshold
        self.scale = 256 / (256 - self.threshold)  # 1 / P(keep)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        layout = _dense_layout(x)
        if layout is not None and kernels.eager_cpu(x):
            return _KernelDropout.apply(x, self.threshold, self.scale, layout)
        # uint8 -> float32 casts and in-place float ops are vectorised on the CPU; uint8 compares and
        # bool/uint8 -> bf16 casts are not, so the mask is built in float32 and cast once.
        keep = random_bytes_like(x).to(torch.float32).ge_(self.threshold).mul_(self.scale)
        return x * keep.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _dense_layout(x: Tensor) -> torch.memory_format | None:
    """x's memory order when it is dense (contiguous, or channels_last for a 4-d tensor), else None."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


class _KernelDropout(torch.autograd.Function):
    """`Dropout` through the compiled kernel: the mask is one byte per element, in x's memory order."""

    @staticmethod
    def forward(ctx, x: Tensor, threshold: int, scale: float, layout: torch.memory_format) -> Tensor:  # noqa: ANN001
        out = torch.empty_like(x, memory_format=layout)
        keep = torch.empty(x.numel(), dtype=torch.uint8)
        seed = kernels.dropout_seed()
        bf16 = x.dtype == torch.bfloat16
        kernels.compiled().dropout_forward(
            x.data_ptr(), out.data_ptr(), keep.data_ptr(), x.numel(), threshold, scale, seed, bf16
        )
        ctx.save_for_backward(keep)
        ctx.scale, ctx.layout = scale, layout
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # noqa: ANN001
        (keep,) = ctx.saved_tensors
        grad = grad.contiguous(memory_format=ctx.layout)
        grad_in = torch.empty_like(grad, memory_format=ctx.layout)
        bf16 = grad.dtype == torch.bfloat16
        kernels.compiled().dropout_backward(
            grad.data_ptr(), keep.data_ptr(), grad_in.data_ptr(), grad.numel(), ctx.scale, bf16
        )
        return grad_in, None, None, None


class ImageConv2d(nn.Conv2d):
    """`nn.Conv2d` for a model's first layer (one input channel, 3x3, stride 1, padding 0 or 1) whose weight
    and bias gradients come from the compiled kernel in float32 CPU training.

    oneDNN computes them as any convolution's: ~2.3 ms of a ~48 ms float32 cnn-dropout step on AVX2 for 50
    MFLOP. The kernel (`kernels.py`, split over torch's threads) sums in float32 by image chunks in a fixed
    order, so the gradients do not depend on the thread count. In one process, alternating 4-step windows
    with and without it (2-core Intel Xeon), the float32 cnn-dropout step took 0.952 of the time held to
    AVX2 and 0.96 on AVX-512; convnet's (no bias, padding 1) 1.007. Under bf16 autocast oneDNN's own was as
    fast or faster (1.0 with avx512_bf16, 1.038 with AMX), so there, as in eval, export, on GPUs, for an
    input that needs a gradient, other shapes or without a compiler, this is `nn.Conv2d` itself. The forward
    is torch's convolution in every case, and the parameters and state dict are nn.Conv2d's.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self._kernel_applies(x):
            return _ImageConvGrad.apply(x, self.weight, self.bias, self.padding[0])
        return super().forward(x)

    def _kernel_applies(self, x: Tensor) -> bool:
        return (
            self.training
            and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and self.weight.requires_grad
            and not x.requires_grad
            and self.in_channels == 1
            and self.out_channels % 16 == 0
            and self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding in ((0, 0), (1, 1))
            and self.padding_mode == "zeros"
            and x.dim() == 4
            and x.shape[2] >= 3
            and x.shape[3] >= 3
            and self.weight.device.type == "cpu"
            and _dense(self.weight)
            and kernels.eager_cpu(x)
        )


def _dense(weight: Tensor) -> bool:
    return weight.is_contiguous() or weight.is_contiguous(memory_format=torch.channels_last)


class _ImageConvGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:  # noqa: ANN001
        x = x.contiguous()  # one channel: NCHW and channels_last are the same bytes
        ctx.save_for_backward(x)
        ctx.padding, ctx.has_bias = padding, bias is not None
        ctx.weight_layout = (weight.shape, weight.stride())
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, Tensor | None, None]:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        # the weight's own strides (DDP's gradient buckets expect them): a dense [O, 1, 3, 3], NCHW or
        # channels_last, holds (o, 0, kh, kw) at o * 9 + kh * 3 + kw either way, the kernel's order
        grad_w = torch.empty_strided(*ctx.weight_layout)
        channels = grad_w.shape[0]
        grad_b = torch.empty(channels) if ctx.has_bias else None
        n, _, h, w = x.shape
        pointers = (
            x.data_ptr(),
            grad.data_ptr(),
            grad_w.data_ptr(),
            0 if grad_b is None else grad_b.data_ptr(),
        )
        kernels.compiled().conv1_weight_grad(*pointers, n, h, w, channels, ctx.padding)
        return None, grad_w, grad_b, None


def random_bytes_like(x: Tensor) -> Tensor:
    """Uniform random uint8 of x's shape, laid out like x when x is dense (contiguous or channels_last)."""
    n = x.numel()
    # random_ over the full int64 range gives 64 uniform bits; plain random_() leaves the top bit 0.
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
    flat = words.view(torch.uint8)[:n]
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return flat.as_strided(x.shape, x.stride())
    return flat.view(x.shape)


def keras_init(model: nn.Module, kernel: str = "glorot_uniform") -> nn.Module:
    """Initialise conv and dense layers as Keras does (its kernel initializer, zero biases).

    The seed-faithful variants use it so they start where the notebook's models started; torch's default
    (kaiming-uniform with a=sqrt(5), uniform biases) is smaller for wide layers.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            if kernel == "glorot_uniform":
                nn.init.xavier_uniform_(module.weight)
            elif kernel == "he_normal":
                # std sqrt(2 / fan_in); Keras also truncates at 2 std, which changes little and costs seconds
                # (erfinv) on the 11M weights of the Keras ResNet.
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            else:
                raise ValueError(f"unknown Keras initializer {kernel!r}")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def global_max_pool(z: Tensor, training: bool) -> Tensor:
    """[N, C, H, W] -> [N, C]: each channel's largest pixel (convnet's and resnet9's global pool).

    `torch.amax` (in the exported graph, ONNX ReduceMax), except when torch.compile traces training: there
    the same values come from `max` over the flattened pixels, whose backward sends the gradient to one pixel.
    Inductor's backward of `amax` after BatchNorm + GELU under bf16 autocast (torch 2.14.1, CPU) gave NaN
    gradients to every layer below it, so `--compile` on a CPU with native bf16 stopped at its second step
    with a non-finite loss (tests/engine/test_compile.py holds a compiled bf16 step finite). On ties `amax`
    shares the gradient between the pixels and `max` gives it to one: eager training stays as it was.
    """
    if training and torch.compiler.is_compiling():
        return z.flatten(2).max(dim=2).values
    return torch.amax(z, dim=(2, 3))


def scaled(widths: tuple[int, ...] | list[int], width: float) -> tuple[int, ...]:
    """Channel counts times a width multiplier, at least 8 each (a `width` kwarg scales a whole family)."""
    if width <= 0:
        raise InputError(f"model option width must be positive, got {width}")
    return tuple(max(8, round(w * width)) for w in widths)
