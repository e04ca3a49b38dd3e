"""The CUDA speed switches are process-wide: on while a run trains, PyTorch's settings back after it.

The flags are plain module attributes, so setting them needs no GPU; this checks the save-and-restore on any
machine (on a CUDA one the trainer wraps every run in it)."""

from __future__ import annotations

import pytest
import torch

from fashiondist.engine.switches import speed_switches


def _flags() -> tuple[bool, bool, bool]:
    return (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )


@pytest.fixture
def strict_fp32():
    """Start from strict float32 (TF32 matmuls and autotuning off, cuDNN TF32 off), whatever the process had."""
    before = _flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = (
        before
    )


def test_on_inside_a_cuda_run_restored_after(strict_fp32):
    with speed_switches("cuda"):
        assert _flags() == (True, True, True)
    assert _flags() == (False, False, False)


def test_restored_when_the_run_raises(strict_fp32):
    with pytest.raises(RuntimeError), speed_switches("cuda"):
        raise RuntimeError("a run that fails half way")
    assert _flags() == (False, False, False)


def test_a_cpu_run_changes_nothing(strict_fp32):
    with speed_switches("cpu"):
        assert _flags() == (False, False, False)
    assert _flags() == (False, False, False)
