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

On the CPU the switches change nothing, and the log line says so.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator


def set_speed_switches(acc: Accelerator) -> str:
    """Turn the CUDA switches on for `acc`'s device (process-wide); return what is on, for the log line."""
    if acc.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        cuda = "TF32 matmuls on, cuDNN autotuning on"
    else:
        cuda = "TF32 and cuDNN autotuning off: no CUDA"
    backend = str(getattr(acc.state.dynamo_plugin.backend, "value", acc.state.dynamo_plugin.backend)).lower()
    compiled = "no torch.compile" if backend == "no" else f"torch.compile ({backend})"
    return f"{cuda}; {compiled}"
