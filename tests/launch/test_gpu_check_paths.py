"""launch/gpu_check.py's GPU inference paths stage, as far as a CPU can check it: when it skips and why,
and the side-by-side table it writes when it measures (fed rows, since only a GPU can measure them)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

GPU_CHECK = Path(__file__).resolve().parents[2] / "launch" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "smoke,device,providers,reason",
    [
        (True, "cuda", ["CUDAExecutionProvider"], "smoke mode (CPU-sized run)"),
        (False, "cpu", ["CPUExecutionProvider"], "no CUDA GPU for torch"),
        (
            False,
            "cuda",
            ["CPUExecutionProvider"],
            "onnxruntime has no CUDAExecutionProvider (CPUExecutionProvider)",
        ),
        (False, "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], None),
    ],
)
def test_skip_reason(gpu_check, smoke, device, providers, reason):
    cfg = SimpleNamespace(smoke=smoke, device=device, ort_providers=providers)
    assert gpu_check.gpu_paths_skip_reason(cfg) == reason


def test_a_provider_onnxruntime_lacks_is_a_skipped_row_not_a_failure(gpu_check, tmp_path):
    cfg = SimpleNamespace(ort_providers=["CUDAExecutionProvider", "CPUExecutionProvider"], work=tmp_path)
    row = gpu_check.GpuPathRow("fp16", "tensorrt", io_binding=True)
    gpu_check.measure_gpu_path(cfg, row, tmp_path / "m.onnx", None, None, None, gpu_check.Budget(300))
    assert row.problem == "skipped: onnxruntime has no TensorrtExecutionProvider" and not row.ok


def test_table_puts_the_paths_side_by_side(gpu_check):
    row = gpu_check.GpuPathRow
    paths = {
        "model": "cnn",
        "rows": [
            row("fp32", "cuda", False, images_per_s=1e5, parity_ratio=0.01, argmax_agreement=1.0, ok=True),
            row("fp16", "tensorrt", True, problem="skipped: time budget spent"),
        ],
    }
    table = gpu_check.tables([], [], {}, paths)
    assert "| fp32 | cuda | False | False | 100,000 | 0.01 | 1.0000 | yes |" in table
    assert "| fp16 | tensorrt | False | True | - | - | - | NO: skipped: time budget spent |" in table
    assert gpu_check.tables([], [], {}, {"skipped": "smoke mode (CPU-sized run)", "rows": []}).endswith(
        "GPU inference paths: skipped: smoke mode (CPU-sized run)"
    )
