"""`fashiondist doctor` on this machine: every field there, and consistent with /proc/cpuinfo and auto."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashiondist.cli import main

REPO = Path(__file__).resolve().parents[2]
_HELD_TO_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _cpuinfo_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo (not Linux)")
    return set(re.search(r"^flags\s*:(.*)$", cpuinfo.read_text(), re.M).group(1).split())


def _doctor_json(capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["doctor", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_doctor_json_describes_this_machine(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    for name in ("ACCELERATE_MIXED_PRECISION", *_HELD_TO_AVX2):
        monkeypatch.delenv(name, raising=False)
    report = _doctor_json(capsys)
    assert set(report) == {
        "cpu", "gpus", "cuda", "distributed", "versions", "onnxruntime_providers", "csv_reader",
        "cpu_kernels", "accelerate_config", "precision_auto", "recipe",
    }  # fmt: skip
    flags, cpu = _cpuinfo_flags(), report["cpu"]
    assert cpu["isa"] == {flag: flag in flags for flag in cpu["isa"]}
    assert cpu["native_bf16"] == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert cpu["usable_cores"] == len(os.sched_getaffinity(0)) and cpu["torch_threads"] >= 1
    assert report["versions"]["torch"] and report["versions"]["onnxruntime"]
    assert report["onnxruntime_providers"]["usable"]["cpu"] is True
    assert report["distributed"]["gloo"] is True
    assert report["csv_reader"]["compiled"] == (
        importlib.util.find_spec("fashiondist.data._plainrows") is not None
    )
    kernels = report["cpu_kernels"]
    assert kernels["compiled"] == (importlib.util.find_spec("fashiondist.models._kernels") is not None)
    assert kernels["isa"] in ({"avx512", "avx2", "baseline"} if kernels["compiled"] else {None})
    assert 1 <= kernels["threads"] <= (os.cpu_count() if kernels["compiled"] else 1)
    auto = report["precision_auto"]
    if not report["gpus"]:
        assert auto["precision"] == ("bf16" if cpu["native_bf16"] else "no")
        assert report["onnxruntime_providers"]["usable"]["cuda"] is False
        assert report["recipe"]["path"] == "launch/experiments/cpu-fast.yaml"
    else:
        assert auto["precision"] == ("bf16" if all(g["bf16"] for g in report["gpus"]) else "fp16")
    assert (REPO / report["recipe"]["path"]).is_file()


def test_doctor_follows_the_accelerate_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    report = _doctor_json(capsys)
    assert report["precision_auto"]["precision"] == "bf16"
    assert "ACCELERATE_MIXED_PRECISION" in report["precision_auto"]["reason"]
    assert report["accelerate_config"]["environment"]["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_doctor_table_with_pytorch_held_to_avx2():
    """The table, from a fresh process whose PyTorch is held to AVX2: auto is fp32 there, and says why."""
    if torch.cuda.is_available():
        pytest.skip("with a CUDA GPU, auto follows the GPU, not the held CPU")
    flags = _cpuinfo_flags()
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_MIXED_PRECISION"}
    env.update(_HELD_TO_AVX2, PYTHONPATH=str(REPO), COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, "-m", "fashiondist", "doctor"], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--precision auto" in proc.stdout and "start with" in proc.stdout
    if flags & {"avx512_bf16", "amx_bf16"}:
        assert (
            "no: auto: the CPU has" in proc.stdout
            and "held below it (ATEN_CPU_CAPABILITY=avx2)" in proc.stdout
        )
    else:
        assert "no: auto: the CPU has no native bf16" in proc.stdout
