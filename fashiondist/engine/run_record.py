"""run.json: how and where a run was made, written when it starts and completed when it ends.

    begin(run_dir, cfg.to_dict(), accelerator, data_record(data), choice)   # the main process, at the start
    finish(run_dir, "finished", {"best_val_acc": 0.91, ...})               # at the end (or "preempted")
    environment_differences(recorded["environment"], rerun["environment"])  # what `reproduce` blames

The record: the command line; fashiondist's version and, from a git checkout, its commit and whether the tree
was dirty; python and the packages that decide the numbers; the CPU (model, the ISA flags that matter, the
kernels ATen picked) and GPUs (name, capability, driver, CUDA) from `fashiondist.hardware`; torch's thread
counts; world size and backend; the container image (FASHIONDIST_IMAGE, set by the Dockerfiles); the data
(source, counts, sha256 of the uint8 images and labels); seeds; the resolved precision; start and end times.
Every write is atomic (`fashiondist.atomic_io`), so a reader sees the old record or the new one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fashiondist import __version__
from fashiondist.atomic_io import write_json
from fashiondist.errors import InputError
from fashiondist.hardware import (
    ISA_FLAGS,
    PrecisionChoice,
    cuda_gpus,
    cuda_versions,
    package_version,
    read_cpu,
)
from fashiondist.run_layout import RUN_FILE

FORMAT = 1
IMAGE_ENV = "FASHIONDIST_IMAGE"
PACKAGES = ("torch", "torchvision", "accelerate", "onnx", "onnxruntime", "numpy")
# Settings that change which kernels run or how many threads sum in parallel: recorded, and named when they differ.
NUMERIC_ENV = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
    "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE", "ACCELERATE_MIXED_PRECISION",
)  # fmt: skip
GIT_TIMEOUT_S = (
    0.5  # `git status` of this small tree takes ~10 ms; a hung or slow git is not worth waiting for
)
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding fashiondist/: a checkout's root


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_state(root: Path = PACKAGE_ROOT) -> dict[str, Any]:
    """{"commit", "dirty", "note"}: the checkout the code runs from, or why there is no commit to name."""
    if not (root / ".git").exists():  # a directory in a clone, a file in a worktree
        return {
            "commit": None,
            "dirty": None,
            "note": "not running from a git checkout (an installed package)",
        }
    git = shutil.which("git")
    if git is None:
        return {"commit": None, "dirty": None, "note": "a git checkout, but git is not installed"}
    try:
        # one process for both: `# branch.oid <sha>` and one line per changed tracked file
        out = subprocess.run(
            [git, "-C", str(root), "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
            capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as err:
        return {"commit": None, "dirty": None, "note": f"git status failed: {type(err).__name__}"}
    lines = out.splitlines()
    oid = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), None)
    return {
        "commit": None if oid in (None, "(initial)") else oid,
        "dirty": any(not line.startswith("#") for line in lines),
        "note": None,
    }


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the numbers; None for one that is not installed."""
    return {name: package_version(name) for name in PACKAGES}


def machine() -> dict[str, Any]:
    """The CPU, the GPUs, and what PyTorch does on them (kernels, threads), through `fashiondist.hardware`."""
    import torch  # here, so that reading a record (evaluate, export, the report) does not import torch

    cpu = read_cpu()
    return {
        "platform": platform.platform(),
        "cpu": cpu.to_dict(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels ATen dispatches to
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "gpus": [gpu.to_dict() for gpu in cuda_gpus()],
        **cuda_versions(),
        "env": {name: os.environ[name] for name in NUMERIC_ENV if name in os.environ},
    }


def environment(accelerator: Any) -> dict[str, Any]:
    """Everything about this process that is not the config or the data."""
    import torch

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return {
        "fashiondist": {"version": __version__, **git_state()},
        "python": platform.python_version(),
        "packages": package_versions(),
        "machine": machine(),
        "distributed": {
            "world_size": accelerator.num_processes,
            "type": str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type)),
            "backend": torch.distributed.get_backend() if distributed else None,
        },
        "image": os.environ.get(IMAGE_ENV),  # the container image, when inside one of ours
    }


def _split_seed(config: dict[str, Any]) -> int:
    """The seed that picked a run's validation split and folds (`TrainConfig.data_seed` of a saved config)."""
    return config["seed"] if config.get("split_seed") is None else config["split_seed"]


def begin(
    run_dir: Path,
    config: dict[str, Any] | None,
    accelerator: Any,
    data: dict[str, Any],
    precision: PrecisionChoice,
    variants: dict[str, dict[str, Any]] | None = None,
    resumed: bool = False,
) -> dict[str, Any]:
    """Write run_dir/run.json at the start of a run (status "running"); a resumed run keeps its first record
    and adds the resume (time, command line, environment) to it.

    A variant's run has its `config`; the parent directory of a multi-model run has `variants` instead
    (model name -> config), and each variant's directory has its own run.json.
    """
    now = _now()
    earlier = read_run_record(run_dir) if resumed and (run_dir / RUN_FILE).is_file() else None
    env = environment(accelerator)
    if earlier is not None:
        earlier["status"] = "running"
        resume = {"time": now, "command": sys.argv, "environment": env, "data": data}
        earlier.setdefault("resumes", []).append(resume)
        write_json(run_dir / RUN_FILE, earlier)
        return earlier
    record = {
        "format": FORMAT,
        "status": "running",
        "started": now,
        "finished": None,
        "command": sys.argv,
        "cwd": os.getcwd(),
        "environment": env,
        "data": data,
        "seeds": {
            "seed": config["seed"] if config else sorted({c["seed"] for c in variants.values()}),
            # the split (unless split_seed names another seed for it), the initial weights, every epoch's
            # permutation and augmentation, and the dropout masks (per optimizer step and rank)
            "split_seed": _split_seed(config)
            if config
            else sorted({_split_seed(c) for c in variants.values()}),
            "derived": "split, initial weights, epoch order and augmentation, dropout per (step, rank)",
        },
        "precision": {**precision.to_dict(), "resolved": str(accelerator.mixed_precision)},
        "config": config,
        "variants": variants,
        "result": None,
    }
    write_json(run_dir / RUN_FILE, record)
    return record


def finish(run_dir: Path, status: str, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Complete run_dir/run.json: the end time, how the run ended ("finished", "preempted"), its result."""
    record = read_run_record(run_dir)
    record.update(status=status, finished=_now(), result=result)
    write_json(run_dir / RUN_FILE, record)
    return record


@contextlib.contextmanager
def failure_recorded(run_dir: Path | None, main_process: bool) -> Iterator[None]:
    """A run that raises (a non-finite loss, a failed export, Ctrl-C) ends its run.json as "failed", with why.

    Only the main process writes; `run_dir` None (no run directory of this kind) records nothing.
    """
    try:
        yield
    except BaseException as err:
        if main_process and run_dir is not None and (run_dir / RUN_FILE).is_file():
            with contextlib.suppress(Exception):  # the error being raised is the one to report
                if read_run_record(run_dir)["status"] == "running":  # begun by this run, not an earlier one's
                    finish(run_dir, "failed", {"error": f"{type(err).__name__}: {err}"})
        raise


def read_run_record(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"{path}: no such file (runs made before fashiondist recorded run.json have none)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable run record ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InputError(f"{path}: not a run record of format {FORMAT}")
    problem = record_problem(record)
    if problem:
        raise InputError(
            f"{path}: not a complete run record ({problem})",
            hint="restore it from a backup, or rerun the run",
        )
    return record


_NONE = type(None)
_TEXT = (str, _NONE)
# Every key a reader of run.json relies on (`describe`, `reproduce`, `environment_differences`), with the
# JSON types it may hold: read_run_record checks them all, so a hand-edited record is one line naming the key,
# never a KeyError later (or after a whole rerun).
_SCHEMA: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("status", (str,)),
    ("started", (str,)),
    ("finished", _TEXT),
    ("command", (list,)),
    ("environment", (dict,)),
    ("environment.python", (str,)),
    ("environment.packages", (dict,)),
    ("environment.image", _TEXT),
    ("environment.fashiondist", (dict,)),
    ("environment.fashiondist.version", (str,)),
    ("environment.fashiondist.commit", _TEXT),
    ("environment.fashiondist.dirty", (bool, _NONE)),
    ("environment.fashiondist.note", _TEXT),
    ("environment.machine", (dict,)),
    ("environment.machine.cpu", (dict,)),
    ("environment.machine.cpu.model", _TEXT),
    ("environment.machine.cpu.isa", (dict,)),
    ("environment.machine.gpus", (list,)),
    ("environment.machine.driver", _TEXT),
    ("environment.machine.cuda", _TEXT),
    ("environment.machine.torch_cpu_capability", _TEXT),
    ("environment.machine.torch_threads", (int,)),
    ("environment.distributed", (dict,)),
    ("environment.distributed.world_size", (int,)),
    ("environment.distributed.type", (str,)),
    ("environment.distributed.backend", _TEXT),
    ("data", (dict,)),
    ("data.source", (str,)),
    ("data.path", _TEXT),
    ("data.split", (str,)),
    ("data.images", (int,)),
    ("data.labels", (int,)),
    ("data.sha256", (str,)),
    ("seeds", (dict,)),
    ("seeds.seed", (int, list)),
    ("precision", (dict,)),
    ("precision.resolved", (str,)),
    ("precision.reason", (str,)),
    ("config", (dict, _NONE)),
    ("variants", (dict, _NONE)),
)
_MISSING = object()


def record_problem(record: dict[str, Any]) -> str | None:
    """What is missing or of the wrong type in a run record (the first such key), or None when it is whole."""
    for dotted, types in _SCHEMA:
        value: Any = record
        for key in dotted.split("."):
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            return f"no {dotted!r}"
        # a bool is an int to Python, never to run.json's readers
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            kinds = " or ".join("null" if t is _NONE else t.__name__ for t in types)
            return f"{dotted!r} is {type(value).__name__ if value is not None else 'null'}, expected {kinds}"
    if (record["config"] is None) == (record["variants"] is None):
        return "expected either 'config' (one run) or 'variants' (a multi-model run)"
    return None


def find_run_record(checkpoint: str | Path) -> dict[str, Any] | None:
    """The run.json of the run a checkpoint belongs to (the run dir, its best/ or last/, or a weights file)."""
    path = Path(checkpoint)
    for directory in (path, path.parent, path.parent.parent):
        if (directory / RUN_FILE).is_file():
            return read_run_record(directory)
    return None


def describe_run(run_dir: str | Path) -> dict[str, str] | None:
    """`describe` of run_dir/run.json; None for a run made before fashiondist recorded one."""
    if not (Path(run_dir) / RUN_FILE).is_file():
        return None
    return describe(read_run_record(run_dir))


def describe(record: dict[str, Any]) -> dict[str, str]:
    """run.json in a few labelled lines, for `fashiondist evaluate` and the HTML report."""
    env, data = record["environment"], record["data"]
    package, mach = env["fashiondist"], env["machine"]
    commit = package["commit"] or package["note"]
    if package["commit"] and package["dirty"]:
        commit += " (uncommitted changes)"
    cpu = mach["cpu"]
    isa = ", ".join(flag for flag in ISA_FLAGS if cpu["isa"].get(flag)) or "none of " + ", ".join(ISA_FLAGS)
    gpus = "; ".join(f"{g['name']} (capability {g['capability']})" for g in mach["gpus"]) or "none"
    if mach["gpus"]:
        gpus += f", driver {mach['driver']}, CUDA {mach['cuda']}"
    dist = env["distributed"]
    return {
        "command": " ".join(record["command"]),
        "fashiondist": f"{package['version']}, commit {commit}",
        "software": f"python {env['python']}, "
        + ", ".join(f"{name} {version or '(not installed)'}" for name, version in env["packages"].items()),
        "CPU": f"{cpu['model']} ({isa}; ATen kernels {mach['torch_cpu_capability']}, "
        f"{mach['torch_threads']} torch threads)",
        "GPUs": gpus,
        "processes": (
            f"{dist['world_size']} (not distributed)"
            if dist["type"] == "NO"  # accelerate's DistributedType.NO: one process
            else f"{dist['world_size']} ({dist['type']}, backend {dist['backend'] or 'none'})"
        ),
        "container image": env["image"] or "none",
        "data": f"{data['source']} ({data['split']}): {data['images']:,} images, {data['labels']:,} labels, "
        f"{data['sha256']}",
        "seed": str(record["seeds"]["seed"]),
        "precision": f"{record['precision']['resolved']} ({record['precision']['reason']})",
        "started": record["started"],
        "finished": f"{record['finished'] or '-'} ({record['status']})",
    }


# What `reproduce` compares between two environments: (label, path into the environment).
_COMPARED = (
    ("CPU model", ("machine", "cpu", "model")),
    ("CPU ISA flags", ("machine", "cpu", "isa")),
    ("ATen CPU kernels", ("machine", "torch_cpu_capability")),
    ("torch threads", ("machine", "torch_threads")),
    ("GPUs", ("machine", "gpus")),
    ("CUDA", ("machine", "cuda")),
    ("NVIDIA driver", ("machine", "driver")),
    ("numeric environment variables", ("machine", "env")),
    ("python", ("python",)),
    ("packages", ("packages",)),
    ("fashiondist commit", ("fashiondist", "commit")),
    ("fashiondist tree dirty", ("fashiondist", "dirty")),
    ("world size", ("distributed", "world_size")),
    ("distributed backend", ("distributed", "backend")),
)


def _at(mapping: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        mapping = mapping.get(key) if isinstance(mapping, dict) else None
    return mapping


def _changes(old: Any, new: Any) -> str:
    """`old -> new`, narrowed to the keys that differ when both are mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
        return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
    return f"{old!r} -> {new!r}"


def environment_differences(recorded: dict[str, Any], rerun: dict[str, Any]) -> list[str]:
    """One line per compared property of two run.json environments that differs, e.g. `torch threads: 2 -> 1`."""
    return [
        f"{label}: {_changes(_at(recorded, path), _at(rerun, path))}"
        for label, path in _COMPARED
        if _at(recorded, path) != _at(rerun, path)
    ]
