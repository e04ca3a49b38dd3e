"""What a benchmark ran on, saved with every result: CPU, cores, load, GPU, library versions, thread counts.

A number without its machine is noise: the JSON of every `fashiondist bench` command carries this record,
and the table printed with it names the CPU, the load average when the run started and the threads used.
`CpuShare` also measures how much CPU *other* processes took while the benchmark ran (Linux): on a shared
machine that number says whether a table can be trusted, and contention does not hit all variants alike
(torch's OpenMP threads spin at barriers and suffer far more than onnxruntime from a busy neighbour).
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Any

from fashiondist.hardware import package_version, read_cpu

_PACKAGES = (
    "fashiondist",
    "torch",
    "torchvision",
    "accelerate",
    "onnxruntime",
    "onnx",
    "numpy",
    "pandas",
    "pyarrow",
)
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none): > cores means the timings were shared."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe_machine(torch_threads: bool = True) -> dict[str, Any]:
    """The record saved with every benchmark. `torch_threads=False` leaves torch unimported (for torch-free runs)."""
    cpu = read_cpu()
    record: dict[str, Any] = {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu.model,
        "cpu_count": cpu.logical_cores,
        "usable_cores": cpu.usable_cores,
        "cpu": cpu.to_dict(),  # ISA flags and native bf16: bf16 numbers mean nothing without them
        "load_average": load_average(),
        "gpu": None,
        "versions": {name: package_version(name) for name in _PACKAGES},
        "threads": {name.lower(): os.environ.get(name) for name in _THREAD_VARIABLES},
    }
    if torch_threads:
        import torch

        record["threads"]["torch_intra_op"] = torch.get_num_threads()
        record["threads"]["torch_inter_op"] = torch.get_num_interop_threads()
        if torch.cuda.is_available():
            record["gpu"] = {
                "name": torch.cuda.get_device_name(0),
                "count": torch.cuda.device_count(),
                "cuda": torch.version.cuda,
            }
    return record


def machine_line(record: dict[str, Any], torch_threads: int | None = None) -> str:
    """One line for the table caption: CPU x cores, GPU, load average, threads, torch version.
    `torch_threads`: the threads the benchmark ran torch with, when it set them."""
    gpu = record.get("gpu")
    load = record.get("load_average")
    threads = record["threads"]
    cpu = record.get("cpu") or {}
    bf16 = " (native bf16)" if cpu.get("native_bf16") else " (no native bf16)" if cpu else ""
    parts = [f"{record['cpu_model']}{bf16} x {record['usable_cores']} cores"]
    parts.append(f"GPU {gpu['name']}" if gpu else "no GPU")
    if load is not None:
        parts.append(f"load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} at the start")
    share = record.get("cpu_share")
    if share is not None:
        noisy = " (NOISY: the timings shared the CPU)" if share["other_processes"] > 0.1 else ""
        parts.append(f"other processes used {share['other_processes']:.0%} of the CPUs during the run{noisy}")
    if torch_threads or "torch_intra_op" in threads:
        n = torch_threads or threads["torch_intra_op"]
        parts.append(f"torch {record['versions']['torch']} ({n} thread{'' if n == 1 else 's'})")
    if record["versions"].get("onnxruntime"):
        parts.append(f"onnxruntime {record['versions']['onnxruntime']}")
    return "; ".join(parts)


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU-seconds over all CPUs since boot, from /proc/stat; None off Linux. Steal counts as busy."""
    try:
        with open("/proc/stat") as fh:
            ticks = [
                int(x) for x in fh.readline().split()[1:9]
            ]  # user nice system idle iowait irq softirq steal
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def _own_cpu_seconds() -> float:
    t = os.times()  # this process and the children it has waited for (the end-to-end subprocesses)
    return t.user + t.system + t.children_user + t.children_system


class CpuShare:
    """`with CpuShare() as share: ...` then `share.result()`: the shares of all CPUs' time that were busy, used
    by this benchmark (and its children), and used by other processes, while the block ran."""

    def __enter__(self) -> CpuShare:
        self._start, self._own = _cpu_seconds(), _own_cpu_seconds()
        self._end: tuple[float, float] | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        self._end, self._own = _cpu_seconds(), _own_cpu_seconds() - self._own

    def result(self) -> dict[str, float] | None:
        if self._start is None or self._end is None or self._end[1] <= self._start[1]:
            return None
        busy, total = self._end[0] - self._start[0], self._end[1] - self._start[1]
        return {
            "busy": round(busy / total, 3),
            "this_benchmark": round(min(self._own, busy) / total, 3),
            "other_processes": round(max(busy - self._own, 0.0) / total, 3),
        }
