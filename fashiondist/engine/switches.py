"""The usual GPU speed switches, set where a process prepares to train, and said in the run's first log line.

- TF32 (`torch.backends.cuda.matmul.allow_tf32`, `torch.backends.cudnn.allow_tf32`): float32 matmuls and
  convolutions on tensor cores with a 10-bit mantissa (Ampere and later GPUs), what autocast leaves in
  float32 and all of an fp32 (`--precision no`) run. PyTorch leaves TF32 matmuls off by default. Checks that
  need strict float32 turn it off around themselves (`launch/gpu_check.py`); export runs on the CPU.
- cuDNN autotuning (`torch.backends.cudnn.benchmark`): the training batches have one fixed shape
  (`TrainBatches` never yields a partial window), so cuDNN times its convolution algorithms once per shape
  and keeps the fastest; the evaluation's last, smaller batch is one more shape.
- `--compile`: torch.compile through accelerate (its dynamo plugin, `make_accelerator`); the engine saves and
  evaluates the unwrapped module, so checkpoints never carry `_orig_mod.`.

On the CPU the switches change nothing, and the log line says so. They are process-wide, so they hold only
while a run trains (`speed_switches`, around `Trainer.run` and each benchmark): a process that trains and then
checks strict float32 results, as the test suite and `launch/gpu_check.py` do, gets PyTorch's defaults back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate import Accelerator


def describe_speed_switches(acc: Accelerator) -> str:
    """What `speed_switches` turns on for `acc`'s device, and whether torch.compile is in use: the log line."""
    if acc.device.type == "cuda":
        cuda = "TF32 matmuls on, cuDNN autotuning on"
    else:
        cuda = "TF32 and cuDNN autotuning off: no CUDA"
    backend = str(getattr(acc.state.dynamo_plugin.backend, "value", acc.state.dynamo_plugin.backend)).lower()
    compiled = "no torch.compile" if backend == "no" else f"torch.compile ({backend})"
    return f"{cuda}; {compiled}"


@contextmanager
def speed_switches(device_type: str) -> Iterator[None]:
    """Turn TF32 and cuDNN autotuning on while the block runs on a `device_type` ("cuda", "cpu") device, and
    put back what was set before, however the block ends."""
    if device_type != "cuda":
        yield
        return
    cuda_matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (cuda_matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark)
    cuda_matmul.allow_tf32 = cudnn.allow_tf32 = cudnn.benchmark = True
    try:
        yield
    finally:
        cuda_matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = before
