"""The precision of the device a run really uses, resolved once per run; the version of a module whatever
distribution installed it (issue 20, item 7)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_hardware import AVX2_ONLY, AVX512_BF16, H100, V100, _cpu

from fashiondist import hardware
from fashiondist.errors import InputError
from fashiondist.hardware import package_version, resolve_precision, run_gpus

CPU_RUN = {"ACCELERATE_USE_CPU": "true"}  # what `accelerate launch --cpu` and `use_cpu: true` set


@pytest.mark.parametrize(
    ("cpuinfo", "gpus", "env", "expected"),
    [
        (AVX2_ONLY, [H100], {}, "bf16"),  # a GPU run on the H100
        (AVX2_ONLY, [H100], CPU_RUN, "no"),  # the same host, the run held to a CPU without native bf16
        (AVX512_BF16, [V100], {}, "fp16"),
        (AVX512_BF16, [V100], CPU_RUN, "bf16"),  # the CPU's native bf16, not the V100's fp16
        (AVX2_ONLY, [H100], {"ACCELERATE_USE_CPU": "0"}, "bf16"),
    ],
)
def test_auto_follows_the_device_the_run_uses(tmp_path, cpuinfo, gpus, env, expected):
    choice = resolve_precision("auto", _cpu(tmp_path, cpuinfo), run_gpus(gpus, env), env={})
    assert choice.precision == expected, choice.reason


def test_fp16_on_a_gpu_host_held_to_the_cpu_is_refused(tmp_path):
    # accelerate would train such a run in fp32 without a word (no fp16 autocast on the CPU)
    with pytest.raises(InputError, match="needs a CUDA GPU"):
        resolve_precision("fp16", _cpu(tmp_path, AVX512_BF16), run_gpus([H100], CPU_RUN), env={})


@pytest.mark.slow
def test_precision_is_resolved_once_per_run(tmp_path, monkeypatch):
    """A multi-model run (its parent's run.json, the Accelerator, the variant's trainer and run.json) asks
    the hardware once; everyone reads that one choice."""
    import json

    from fashiondist.config import TrainConfig
    from fashiondist.consoles import log_console
    from fashiondist.pipeline import train_all

    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0])
        return resolve(*args, **kwargs)

    resolve = hardware.resolve_precision
    monkeypatch.setattr(hardware, "resolve_precision", counted)
    parent = tmp_path / "sweep"
    cfg = TrainConfig(model="cnn", data="sample", epochs=1, out=str(parent / "{model}"), quiet=True)
    runs, main = train_all([cfg], parent, log_console())
    assert main and runs[0].epochs_done == 1
    assert calls == ["auto"]
    reasons = {
        json.loads((d / "run.json").read_text())["precision"]["reason"] for d in (parent, parent / "cnn")
    }
    assert len(reasons) == 1


def _fake_distribution(root: Path, name: str, version: str, module: str) -> None:
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(f"{module}\n")


def test_onnxruntime_version_from_the_gpu_distribution(tmp_path, monkeypatch):
    """GPU installs get the module `onnxruntime` from the distribution `onnxruntime-gpu`."""
    _fake_distribution(tmp_path, "onnxruntime-gpu", "1.99.0", "onnxruntime")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])  # this environment's own onnxruntime out of sight
    assert package_version("onnxruntime") == "1.99.0"
    assert package_version("onnxruntime-gpu") == "1.99.0"
    assert package_version("not-installed-anywhere") is None
