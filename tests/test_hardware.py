"""Hardware detection and `--precision auto`, with the machine faked both ways (and the real one read)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashiondist.errors import InputError
from fashiondist.hardware import Gpu, read_cpu, resolve_precision

# The first processor's lines of /proc/cpuinfo on the two AMD EPYC machines fashiondist was run on.
_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC {model} Processor
flags\t\t: fpu sse2 avx avx2 fma {extra}
cpu cores\t: 2

processor\t: 1
vendor_id\t: AuthenticAMD
flags\t\t: fpu
"""
AVX512_BF16 = _EPYC.format(model="9R14", extra="avx512f avx512bw avx512_bf16 avx512_vnni")
AVX2_ONLY = _EPYC.format(model="7R13", extra="")
SAPPHIRE_RAPIDS = AVX2_ONLY.replace("AuthenticAMD", "GenuineIntel").replace(
    "fma", "fma avx512f amx_bf16 amx_tile"
)
REPO = Path(__file__).resolve().parents[1]
H100 = Gpu(0, "NVIDIA H100 80GB HBM3", (9, 0), 80 << 30)
V100 = Gpu(1, "Tesla V100-SXM2-16GB", (7, 0), 16 << 30)


def _cpu(tmp_path: Path, text: str, **env: str):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return read_cpu(str(path), env=env)


def test_cpuinfo_is_read_from_the_first_processor(tmp_path: Path):
    cpu = _cpu(tmp_path, AVX512_BF16)
    assert (cpu.vendor, cpu.model) == ("AuthenticAMD", "AMD EPYC 9R14 Processor")
    assert {"avx2", "avx512f", "avx512_bf16"} <= cpu.flags and cpu.native_bf16
    assert cpu.to_dict()["isa"] == {
        "avx2": True,
        "avx512f": True,
        "avx512_bf16": True,
        "amx_bf16": False,
        "amx_tile": False,
    }


@pytest.mark.parametrize(
    ("cpuinfo", "precision", "reason"),
    [
        (AVX512_BF16, "bf16", "native bf16 (avx512_bf16)"),
        (SAPPHIRE_RAPIDS, "bf16", "native bf16 (amx_bf16)"),
        (AVX2_ONLY, "no", "no native bf16"),
    ],
)
def test_auto_on_the_cpu_follows_native_bf16(tmp_path: Path, cpuinfo: str, precision: str, reason: str):
    choice = resolve_precision("auto", _cpu(tmp_path, cpuinfo), [], env={})
    assert choice.precision == precision and reason in choice.reason and choice.warning is None


def test_auto_is_fp32_when_pytorch_is_held_to_avx2(tmp_path: Path):
    env = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    cpu = _cpu(tmp_path, AVX512_BF16, **env)
    choice = resolve_precision("auto", cpu, [], env=env)
    assert not cpu.native_bf16 and choice.precision == "no"
    assert "held below it (ATEN_CPU_CAPABILITY=avx2)" in choice.reason
    assert (
        _cpu(tmp_path, AVX512_BF16, ONEDNN_MAX_CPU_ISA="AVX512_CORE").held_to
        == "ONEDNN_MAX_CPU_ISA=AVX512_CORE"
    )
    assert _cpu(tmp_path, AVX512_BF16, ONEDNN_MAX_CPU_ISA="AVX512_CORE_BF16").native_bf16


def test_explicit_bf16_without_native_bf16_runs_with_one_warning(tmp_path: Path):
    choice = resolve_precision("bf16", _cpu(tmp_path, AVX2_ONLY), [], env={})
    assert choice.precision == "bf16" and choice.reason == "--precision bf16 as asked"
    assert "bf16 will be slow: this CPU has no avx512_bf16 or amx_bf16" in choice.warning
    assert resolve_precision("bf16", _cpu(tmp_path, AVX512_BF16), [], env={}).warning is None
    assert resolve_precision("no", _cpu(tmp_path, AVX2_ONLY), [], env={}).warning is None


@pytest.mark.parametrize(
    ("gpus", "precision", "warned"),
    [([H100], "bf16", False), ([V100], "fp16", True), ([H100, V100], "fp16", True)],
)
def test_auto_on_cuda_is_bf16_where_every_gpu_has_it(tmp_path: Path, gpus, precision: str, warned: bool):
    cpu = _cpu(tmp_path, AVX2_ONLY)  # the CPU does not matter on a GPU
    choice = resolve_precision("auto", cpu, gpus, env={})
    assert choice.precision == precision and choice.warning is None
    assert ("7.0" in choice.reason) == warned
    assert (resolve_precision("bf16", cpu, gpus, env={}).warning is not None) == warned


@pytest.mark.parametrize("launched", ["bf16", "fp16"])
def test_the_accelerate_config_wins_when_it_sets_a_mixed_precision(tmp_path: Path, launched: str):
    env = {"ACCELERATE_MIXED_PRECISION": launched}
    choice = resolve_precision("auto", _cpu(tmp_path, AVX512_BF16), [V100], env=env)
    assert choice.precision == launched and "accelerate config says mixed_precision" in choice.reason
    # an explicit --precision still beats the launcher, as accelerate's own argument does
    assert resolve_precision("no", _cpu(tmp_path, AVX512_BF16), [V100], env=env).precision == "no"


def test_accelerate_launch_default_no_leaves_auto_to_the_hardware(tmp_path: Path):
    env = {"ACCELERATE_MIXED_PRECISION": "no"}  # what `accelerate launch` writes when nothing is configured
    assert resolve_precision("auto", _cpu(tmp_path, AVX512_BF16), [], env=env).precision == "bf16"


def test_fp16_without_cuda_is_an_input_error(tmp_path: Path):
    cpu = _cpu(tmp_path, AVX512_BF16)
    with pytest.raises(InputError, match="--precision fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu, [], env={})
    with pytest.raises(
        InputError, match=r"ACCELERATE_MIXED_PRECISION=fp16 \(accelerate config\) needs a CUDA"
    ):
        resolve_precision("auto", cpu, [], env={"ACCELERATE_MIXED_PRECISION": "fp16"})


def test_this_machine_matches_proc_cpuinfo():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo (not Linux)")
    flags = set(re.search(r"^flags\s*:(.*)$", cpuinfo.read_text(), re.M).group(1).split())
    cpu = read_cpu(env={})
    assert cpu.flags == flags
    assert cpu.native_bf16 == bool(flags & {"avx512_bf16", "amx_bf16"})


_ACCELERATOR_SCRIPT = """
import sys
from fashiondist.config import Precision, TrainConfig
from fashiondist.engine.trainer import make_accelerator
cfg = TrainConfig(precision=Precision(sys.argv[1]))
first, second = make_accelerator(cfg), make_accelerator(cfg)
print(first.mixed_precision, second.mixed_precision)
"""


@pytest.mark.parametrize(("asked", "expected", "warnings"), [("auto", "no", 0), ("bf16", "bf16", 1)])
def test_the_trainer_on_a_cpu_held_to_avx2(asked: str, expected: str, warnings: int):
    """make_accelerator with PyTorch held to AVX2 (no native bf16 kernels on any CPU): auto trains in fp32;
    an explicit bf16 runs, with one warning per process however many accelerators it makes."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU auto and bf16 follow the GPU")
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_MIXED_PRECISION"}
    env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", _ACCELERATOR_SCRIPT, asked], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [expected, expected]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fashiondist: warning:")]
    assert len(lines) == warnings
    if warnings:
        assert "bf16 will be slow: PyTorch is held below" in lines[0] or "no avx512_bf16" in lines[0]


def test_cgroup_quota_caps_the_usable_cores(tmp_path):
    """A container's CPU quota (cgroup v2 cpu.max, v1 cfs files) rounded up; no quota: the affinity alone."""
    from fashiondist.hardware import cgroup_cpu_quota, usable_cores

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: two threads may run
    assert cgroup_cpu_quota(str(v2)) == 2
    assert usable_cores(str(v2)) == min(2, len(os.sched_getaffinity(0)))
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(str(v2)) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "v1")) == 1
    assert usable_cores(str(tmp_path / "v1")) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(str(tmp_path / "v1")) is None
    assert cgroup_cpu_quota(str(tmp_path / "absent")) is None
