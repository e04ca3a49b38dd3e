"""The compiled CPU training kernels (`_kernels.c`): the 2x2 max-pool (`pool.MaxPool2x2`), dropout
(`layers.Dropout`) and the batch's gather and augmentation (`engine.batches.augment_on_cpu`).

The extension is built when the package is installed, where a C compiler is found (optional, like the CSV
loop); without it the same places use torch's own ops. It is built for AVX-512, AVX2 and the x86-64
baseline and picks the best this CPU runs when it loads (`kernel_isa()`, in `fashiondist doctor`), or the
best within `ATEN_CPU_CAPABILITY` where that holds torch's kernels back (avx2, default). The kernels run
with the GIL released, a large call split by images (or dropout blocks) over torch's own OpenMP threads
(`kernel_threads()`): the libgomp torch loaded, so the threads that spin between torch's ops take the parts
at once. Threads of our own had measured slower than one thread (0.94-0.98 of torch's step time against
0.92-0.95), competing with those spinning threads; torch's, in one process, alternating 4-step windows,
took the cnn-dropout bf16 step to 0.923 of the one-thread time (2-core Intel Xeon, 50 pairs), convnet
bf16 0.939, AVX2-held fp32 0.958. Each part writes what one thread would have, so the numbers do not
depend on the split.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch
from torch import Tensor

_BF16_OR_F32 = (torch.bfloat16, torch.float32)


# ATEN_CPU_CAPABILITY holds torch's own kernels to a smaller instruction set (how the suite and the
# benchmarks stand in for an AVX2-only CPU); ours follow the same hold.
_HOLDS = {"avx512": ("avx512", "avx2", "baseline"), "avx2": ("avx2", "baseline"), "default": ("baseline",)}


@functools.cache
def compiled() -> ModuleType | None:
    """The extension module, or None where it was not built."""
    try:
        from fashiondist.models import _kernels
    except ImportError:
        return None
    allowed = _HOLDS.get(os.environ.get("ATEN_CPU_CAPABILITY", "").lower())
    if allowed is not None:
        _kernels.use_isa(next(isa for isa in _kernels.runnable_isas() if isa in allowed))
    return _kernels


def kernel_isa() -> str | None:
    """Which build of the kernels this CPU runs (avx512, avx2, baseline), or None where none was built."""
    kernels = compiled()
    return None if kernels is None else kernels.isa()


def kernel_threads() -> int:
    """How many threads a large kernel call is split over: torch's OpenMP thread count (`torch.set_num_threads`),
    1 where torch's libgomp is not in the process (another OpenMP build) or the extension was not built."""
    kernels = compiled()
    return 1 if kernels is None else kernels.threads()


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


def dropout_seed() -> int:
    """A seed for the dropout kernels' stream: 64 bits of torch's CPU generator (the full range: `random_()`
    alone leaves the top bit 0), so `torch.manual_seed` governs the masks."""
    return int(torch.empty((), dtype=torch.int64).random_(-(2**63), 2**63 - 1)) % 2**64
