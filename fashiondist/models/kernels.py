"""The compiled CPU training kernels (`_kernels.c`): the 2x2 max-pool (`pool.MaxPool2x2`) and dropout
(`layers.Dropout`).

The extension is built when the package is installed, where a C compiler is found (optional, like the CSV
loop); without it both modules use torch's own ops. It is built for AVX-512, AVX2 and the x86-64 baseline and
picks one when it loads (`kernel_isa()`, in `fashiondist doctor`). The kernels run single-threaded with the
GIL released: splitting a pool across two threads measured slower in a whole training step (0.94-0.98 of
torch's step time, against 0.92-0.95 single-threaded), since torch's own threads are still spinning between
ops.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import Tensor

_BF16_OR_F32 = (torch.bfloat16, torch.float32)


@functools.cache
def compiled() -> ModuleType | None:
    """The extension module, or None where it was not built."""
    try:
        from fashiondist.models import _kernels
    except ImportError:
        return None
    return _kernels


def kernel_isa() -> str | None:
    """Which build of the kernels this CPU runs (avx512, avx2, baseline), or None where none was built."""
    kernels = compiled()
    return None if kernels is None else kernels.isa()


def eager_cpu(x: Tensor) -> bool:
    """Whether a kernel may take `x`: a bf16 or float32 CPU tensor, run eagerly (not traced for ONNX or
    TorchScript, not under torch.compile, which sees only torch ops), with the extension built."""
    return (
        x.device.type == "cpu"
        and x.dtype in _BF16_OR_F32
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and compiled() is not None
    )
