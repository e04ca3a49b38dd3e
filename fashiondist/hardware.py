"""What this machine is, and the precision `--precision auto` trains in on it.

Base layer, torch-free at import: the CPU comes from /proc/cpuinfo (Linux; elsewhere only what `platform`
knows, and no native bf16 is assumed), the GPUs from torch.cuda, imported inside `cuda_gpus()` only. The
doctor command, the trainer's precision and a run's record of its machine all read the machine here.

    cpu = read_cpu()                                   # vendor, model, ISA flags, native bf16, cores
    choice = resolve_precision("auto", cpu, cuda_gpus())
    choice.precision, choice.reason                    # ("bf16", "auto: the CPU has avx512_bf16 ...")

`auto` picks, in this order:
1. a mixed precision that accelerate was told to use (`accelerate launch` with a config or
   `--mixed_precision`, which reach the process as ACCELERATE_MIXED_PRECISION). `no` in that variable does
   not count: `accelerate launch` writes `no` when nothing was configured, so it cannot tell "fp32 asked"
   from "nothing asked"; `--precision no` asks for fp32;
2. on CUDA: bf16 where every GPU has it natively (compute capability 8.0, Ampere, or later), else fp16;
3. on the CPU: bf16 where the CPU has native bf16 instructions (avx512_bf16 or amx_bf16) and PyTorch is
   not held below them (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA); else fp32 ("no"): without them bf16 is
   emulated and measured 6-9x slower than fp32 (AMD EPYC with AVX2 only, cnn-dropout, `bench train`).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fashiondist.errors import InputError

AUTO = "auto"
NO, FP16, BF16 = "no", "fp16", "bf16"
ACCELERATE_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"
CPUINFO = "/proc/cpuinfo"
CGROUP_ROOT = "/sys/fs/cgroup"  # this process's cgroup (v2, inside a container) or the v1 hierarchy's root

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what doctor shows of the CPU's flags
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# PyTorch's own kernels (ATen) held below AVX-512, or oneDNN held below its first bf16 ISA, emulate bf16.
_ATEN_WITHOUT_BF16 = {"default", "avx2"}
_ONEDNN_WITHOUT_BF16 = {"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni"}
_CPU_HINT = "use --precision auto on the CPU: bf16 where the CPU has it natively, else fp32"
BF16_CUDA_CAPABILITY = (8, 0)  # Ampere: the first GPUs with bf16 tensor cores


@dataclass(frozen=True)
class Cpu:
    vendor: str
    model: str
    flags: frozenset[str] = field(default_factory=frozenset)
    logical_cores: int | None = None  # online logical CPUs
    usable_cores: int | None = None  # those this process may run on (affinity, cgroup cpusets)
    held_to: str | None = None  # "ATEN_CPU_CAPABILITY=avx2" when PyTorch is held below native bf16

    @property
    def bf16_flags(self) -> list[str]:
        return [f for f in NATIVE_BF16_FLAGS if f in self.flags]

    @property
    def native_bf16(self) -> bool:
        """bf16 instructions that PyTorch will use: in the CPU and not disabled by the environment."""
        return bool(self.bf16_flags) and self.held_to is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "model": self.model,
            "isa": {flag: flag in self.flags for flag in ISA_FLAGS},
            "native_bf16": self.native_bf16,
            "bf16_flags": self.bf16_flags,
            "held_to": self.held_to,
            "logical_cores": self.logical_cores,
            "usable_cores": self.usable_cores,
        }


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]  # CUDA compute capability (major, minor)
    memory_bytes: int

    @property
    def bf16(self) -> bool:
        return self.capability >= BF16_CUDA_CAPABILITY

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["capability"] = f"{self.capability[0]}.{self.capability[1]}"
        out["bf16"] = self.bf16
        return out


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo (every processor repeats them)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def held_to(env: Mapping[str, str]) -> str | None:
    """The environment setting that holds PyTorch below native bf16 kernels, if one does."""
    aten = env.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten in _ATEN_WITHOUT_BF16:
        return f"ATEN_CPU_CAPABILITY={aten}"
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        isa = env.get(name, "").strip().lower()
        if isa in _ONEDNN_WITHOUT_BF16:
            return f"{name}={env[name].strip()}"
    return None


def read_cpu(cpuinfo: str = CPUINFO, env: Mapping[str, str] | None = None) -> Cpu:
    """The CPU from `cpuinfo` (a /proc/cpuinfo path); off Linux, what `platform` knows and no ISA flags."""
    env = os.environ if env is None else env
    try:
        with open(cpuinfo) as fh:
            text = fh.read()
    except OSError:
        text = ""
    fields = _cpuinfo_fields(text)
    return Cpu(
        vendor=fields.get("vendor_id") or fields.get("CPU implementer") or platform.machine(),
        model=fields.get("model name") or platform.processor() or platform.machine(),
        flags=frozenset((fields.get("flags") or fields.get("Features") or "").split()),
        logical_cores=os.cpu_count(),
        usable_cores=usable_cores(),
        held_to=held_to(env),
    )


def usable_cores(cgroup_root: str = CGROUP_ROOT) -> int | None:
    """The CPUs this process may keep busy: those its affinity allows (cgroup cpusets included), capped by
    its cgroup's CPU quota rounded up (a container run with `--cpus 2` on a 64-core host: 2).

    os.cpu_count() and onnxruntime's default thread count see the host's cores (onnxruntime issue 29510).
    """
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity else os.cpu_count()
    quota = cgroup_cpu_quota(cgroup_root)
    if cores is None or quota is None:
        return cores if quota is None else quota
    return min(cores, quota)


def cgroup_cpu_quota(cgroup_root: str = CGROUP_ROOT) -> int | None:
    """The cgroup's CPU quota in whole CPUs, rounded up (v2 `cpu.max` "QUOTA PERIOD", else v1
    `cpu/cpu.cfs_quota_us` and `cpu.cfs_period_us`), or None when there is none ("max", -1, no file)."""
    root = Path(cgroup_root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if not (quota.isdigit() and period.isdigit()) or int(quota) == 0 or int(period) == 0:
        return None  # "max" (v2) or -1 (v1): no quota
    return -(-int(quota) // int(period))


def cuda_gpus() -> list[Gpu]:
    """The CUDA GPUs this process sees (CUDA_VISIBLE_DEVICES applies); [] without torch or CUDA."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(Gpu(index, props.name, (props.major, props.minor), props.total_memory))
    return gpus


@dataclass(frozen=True)
class PrecisionChoice:
    requested: str  # auto, no, fp16 or bf16
    precision: str  # what the Accelerator is given: no, fp16, bf16 (or what accelerate's launcher asked for)
    reason: str
    warning: str | None = None  # a choice that runs but slowly: say so once

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_precision(
    requested: str, cpu: Cpu, gpus: list[Gpu], env: Mapping[str, str] | None = None
) -> PrecisionChoice:
    """The mixed precision for `requested` (auto, no, fp16, bf16) on this `cpu` and these `gpus`, and why."""
    env = os.environ if env is None else env
    requested = getattr(requested, "value", requested)
    if requested == AUTO:
        precision, reason = _auto(cpu, gpus, env)
    else:
        precision, reason = requested, f"--precision {requested} as asked"
    if precision == FP16 and not gpus:
        # accelerate would accept it and quietly train in float32 (no fp16 autocast on the CPU)
        asked = (
            "--precision fp16"
            if requested != AUTO
            else f"{ACCELERATE_PRECISION_ENV}=fp16 (accelerate config)"
        )
        raise InputError(f"{asked} needs a CUDA GPU; this machine has none", hint=_CPU_HINT)
    return PrecisionChoice(requested, precision, reason, _slow_warning(precision, cpu, gpus))


def _auto(cpu: Cpu, gpus: list[Gpu], env: Mapping[str, str]) -> tuple[str, str]:
    launched = env.get(ACCELERATE_PRECISION_ENV, "").strip().lower()
    if launched and launched not in (
        NO,
        FP16,
        BF16,
    ):  # accelerate's fp8 needs hardware and kernels we do not use
        raise InputError(
            f"{ACCELERATE_PRECISION_ENV}={launched!r}: not one of {NO}, {FP16}, {BF16}",
            hint="fix the accelerate config's mixed_precision (or unset the variable)",
        )
    if launched and launched != NO:
        return (
            launched,
            f"auto: the accelerate config says mixed_precision={launched} ({ACCELERATE_PRECISION_ENV})",
        )
    if gpus:
        old = _without_bf16(gpus)
        if not old:
            return BF16, f"auto: {_gpu_names(gpus)} has native bf16 (compute capability >= 8.0)"
        return (
            FP16,
            f"auto: {_gpu_names(old)} has no native bf16 (compute capability < 8.0), so fp16 with loss scaling",
        )
    if cpu.native_bf16:
        return BF16, f"auto: the CPU has native bf16 ({', '.join(cpu.bf16_flags)})"
    if cpu.bf16_flags:
        return (
            NO,
            f"auto: the CPU has {', '.join(cpu.bf16_flags)} but PyTorch is held below it ({cpu.held_to}), so fp32",
        )
    return (
        NO,
        "auto: the CPU has no native bf16 (no avx512_bf16 or amx_bf16), where bf16 is emulated and slow, so fp32",
    )


def _slow_warning(precision: str, cpu: Cpu, gpus: list[Gpu]) -> str | None:
    if precision != BF16:
        return None
    if gpus:
        old = _without_bf16(gpus)
        if old:
            return f"bf16 on {_gpu_names(old)} (compute capability < 8.0) is emulated and slow; fp16 is its fast mixed precision"
        return None
    if cpu.native_bf16:
        return None
    why = (
        f"PyTorch is held below {', '.join(cpu.bf16_flags)} ({cpu.held_to})"
        if cpu.bf16_flags
        else "this CPU has no avx512_bf16 or amx_bf16"
    )
    return f"bf16 will be slow: {why}, so PyTorch emulates bf16 (measured 6-9x slower than fp32 on an AVX2 CPU); --precision auto picks fp32 here"


def _without_bf16(gpus: list[Gpu]) -> list[Gpu]:
    return [g for g in gpus if not g.bf16]


def _gpu_names(gpus: list[Gpu]) -> str:
    names = sorted({f"{g.name} ({g.capability[0]}.{g.capability[1]})" for g in gpus})
    return " and ".join(names)


_TRUE = {"1", "true", "yes", "on", "y", "t"}  # accelerate's str_to_bool


def cpu_forced(env: Mapping[str, str] | None = None) -> bool:
    """True when the run is told to stay on the CPU although GPUs may be there: ACCELERATE_USE_CPU, which
    `accelerate launch --cpu` and a config's `use_cpu: true` set for the processes they start."""
    env = os.environ if env is None else env
    return env.get("ACCELERATE_USE_CPU", "").strip().lower() in _TRUE


def run_gpus(gpus: list[Gpu], env: Mapping[str, str] | None = None) -> list[Gpu]:
    """The GPUs a run really uses: none when it is held to the CPU (`cpu_forced`), else `gpus`."""
    return [] if cpu_forced(env) else gpus


def this_machine_precision(requested: str) -> PrecisionChoice:
    """`resolve_precision` for a run on this machine: the CPU from /proc/cpuinfo, the GPUs torch sees unless
    the run is held to the CPU (then a GPU host's CPU run gets the CPU's choice, not the GPUs'), os.environ.

    A training run calls it once, in `engine.trainer.make_accelerator`, and reads the choice from there."""
    return resolve_precision(requested, read_cpu(), run_gpus(cuda_gpus()))


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """One `fashiondist: warning:` line on stderr per message and process (a benchmark makes many Accelerators)."""
    if message not in _warned:
        _warned.add(message)
        print(f"fashiondist: warning: {message}", file=sys.stderr)


NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"


def cuda_versions(driver_file: str = NVIDIA_DRIVER_FILE) -> dict[str, str | None]:
    """The CUDA runtime torch was built with and the NVIDIA driver's version (None where there is none).

    The driver comes from the kernel module's version file (Linux), so no NVML library is needed.
    """
    try:
        import torch

        runtime = torch.version.cuda
    except ImportError:
        runtime = None
    try:
        with open(driver_file) as fh:
            first = fh.readline()  # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar ..."
    except OSError:
        first = ""
    numbers = [word for word in first.split() if word[:1].isdigit() and "." in word]
    return {"cuda": runtime, "driver": numbers[0] if numbers else None}


def package_version(package: str) -> str | None:
    """The installed version of `package` (a distribution or an importable module name), or None.

    A module may come from a distribution of another name: `onnxruntime` from `onnxruntime-gpu` (GPU installs
    and images), `onnxruntime-openvino`, ... so a name with no distribution of its own is looked up among the
    distributions that provide a top-level module of that name.
    """
    import importlib.metadata  # here, not at the top: `infer` imports this module and never needs it (~20 ms)

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        pass
    for distribution in importlib.metadata.packages_distributions().get(package, []):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    if package == "fashiondist":  # run from a checkout before `pip install -e .`
        from fashiondist import __version__

        return __version__
    return None
