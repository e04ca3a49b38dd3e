"""`fashiondist doctor`: what this machine is and what fashiondist will do on it, on one screen.

    fashiondist doctor            # tables on stdout
    fashiondist doctor --json     # the same facts as one JSON object, for scripts and bug reports

The CPU (vendor, ISA flags, native bf16, cores, the threads torch will use), the GPUs (compute capability,
memory, bf16), the distributed backends, the library versions, the onnxruntime providers that really start
(each is tried on a one-node model: a listed CUDA provider can still lack its libraries), the accelerate
config in effect, the precision `--precision auto` resolves to and why, and the recipe to start with.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from fashiondist.cli._common import formatter
from fashiondist.consoles import results_console

_PACKAGES = ("fashiondist", "torch", "accelerate", "onnxruntime", "onnx", "numpy")
_GPU_PROVIDERS = ("cuda", "tensorrt")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="what this machine is (CPU, GPUs, libraries) and what fashiondist will do on it",
        description=__doc__,
        formatter_class=formatter(),
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = diagnose()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_tables(report)
    return 0


def diagnose() -> dict[str, Any]:
    """Every fact `doctor` shows, as plain JSON-ready data."""
    import torch

    from fashiondist.hardware import cuda_gpus, package_version, read_cpu, resolve_precision, run_gpus

    cpu, gpus = read_cpu(), cuda_gpus()
    choice = resolve_precision("auto", cpu, run_gpus(gpus))  # a run held to the CPU gets the CPU's choice
    return {
        "cpu": {**cpu.to_dict(), "torch_threads": torch.get_num_threads()},
        "gpus": [g.to_dict() for g in gpus],
        "cuda": torch.version.cuda,
        "distributed": _distributed(bool(gpus)),
        "versions": {name: package_version(name) for name in _PACKAGES},
        "onnxruntime_providers": _ort_providers(),
        "csv_reader": _csv_reader(),
        "cpu_kernels": _cpu_kernels(),
        "accelerate_config": _accelerate_config(),
        "precision_auto": {"precision": choice.precision, "reason": choice.reason},
        "recipe": _recipe(bool(gpus), cpu.native_bf16),
    }


def _distributed(gpu: bool) -> dict[str, bool]:
    """The process-group backends torch was built with; nccl is usable only with a GPU."""
    import torch.distributed as dist

    if not dist.is_available():
        return {"available": False, "nccl": False, "nccl_usable": False, "gloo": False}
    nccl = dist.is_nccl_available()
    return {"available": True, "nccl": nccl, "nccl_usable": nccl and gpu, "gloo": dist.is_gloo_available()}


def _csv_reader() -> dict[str, Any]:
    """Whether the plain-row CSV loop in C was built at install (else pyarrow reads every CSV:
    3.4 s of a core per 100,000 rows against ~0.3 s)."""
    from fashiondist.data.plaincsv import plain_parser

    compiled = plain_parser() is not None
    return {
        "compiled": compiled,
        "note": "plain rows by the C loop, others by pyarrow"
        if compiled
        else "pyarrow only: the C extension was not built (no C compiler at install); reinstall with one",
    }


def _cpu_kernels() -> dict[str, Any]:
    """Whether the C training kernels (max-pool, dropout, batch augmentation) were built, which build this CPU
    runs, and over how many of torch's threads a call is split."""
    from fashiondist.models.kernels import kernel_isa, kernel_threads

    isa, threads = kernel_isa(), kernel_threads()
    return {
        "compiled": isa is not None,
        "isa": isa,
        "threads": threads,
        "note": f"max-pool, dropout and augmentation in C, the {isa} build on {threads} thread(s)"
        if isa
        else "torch ops only: the C extension was not built (no C compiler at install); reinstall with one",
    }


def _tiny_model() -> bytes:
    """A one-node float32 graph (Relu on [1]): enough for a provider to load its libraries and run."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "doctor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # readable by every onnxruntime fashiondist supports
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _ort_providers() -> dict[str, Any]:
    """onnxruntime's listed providers, and for each GPU one whether a session really starts on it."""
    import numpy as np
    import onnxruntime as ort

    from fashiondist.inference.providers import ORT_PROVIDERS, PROVIDER_LISTS
    from fashiondist.inference.session import session_options

    available = ort.get_available_providers()
    usable = {"cpu": "CPUExecutionProvider" in available}
    problems: dict[str, str] = {}
    blob = None
    for name in _GPU_PROVIDERS:
        if ORT_PROVIDERS[name] not in available:
            usable[name] = False
            continue
        blob = blob or _tiny_model()
        try:
            session = ort.InferenceSession(
                blob, sess_options=session_options(), providers=PROVIDER_LISTS[name]
            )
            session.run(None, {"x": np.ones(1, dtype=np.float32)})
            started = session.get_providers()[0]
        except Exception as err:  # a missing CUDA/cuDNN/TensorRT library, no device: onnxruntime says which
            started, problems[name] = None, " ".join(str(err).split())[:300]
        usable[name] = started == ORT_PROVIDERS[name]
        if not usable[name] and name not in problems:
            problems[name] = f"listed, but the session fell back to {started}"
    return {"available": available, "usable": usable, "problems": problems}


def _accelerate_config() -> dict[str, Any]:
    """The default config file of `accelerate launch` (what it holds) and the ACCELERATE_* variables set."""
    from accelerate.commands.config import default_config_file

    from fashiondist.hardware import ACCELERATE_PRECISION_ENV

    keys = (
        "compute_environment",
        "distributed_type",
        "mixed_precision",
        "num_processes",
        "num_machines",
        "use_cpu",
    )
    out: dict[str, Any] = {
        "default_config_file": default_config_file,
        "exists": os.path.isfile(default_config_file),
    }
    if out["exists"]:
        import yaml

        try:
            with open(default_config_file) as fh:
                data = yaml.safe_load(fh) or {}
            out["settings"] = {k: data[k] for k in keys if isinstance(data, dict) and k in data}
        except (OSError, yaml.YAMLError) as err:
            out["problem"] = f"unreadable: {' '.join(str(err).split())[:200]}"
    out["environment"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith("ACCELERATE_")}
    out["mixed_precision_env"] = os.environ.get(ACCELERATE_PRECISION_ENV)
    return out


def _recipe(gpu: bool, native_bf16: bool) -> dict[str, str]:
    """The launch/experiments recipe to start with on this hardware, and the command."""
    if gpu:
        path, why = "launch/experiments/fashion-mnist-best.yaml", "a GPU: the best-accuracy ResNet-9 recipe"
    elif native_bf16:
        path, why = "launch/experiments/cpu-fast.yaml", "a CPU with native bf16: 93% in about 80 s on 2 cores"
    else:
        path, why = (
            "launch/experiments/cpu-fast.yaml",
            "a CPU without native bf16: the fastest recipe, in fp32",
        )
    return {"path": path, "why": why, "command": f"fashiondist train --config {path}"}


def _yes(flag: bool):
    from rich.text import Text

    return Text("yes", style="green") if flag else Text("no")


def _print_tables(report: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    cpu, ort = report["cpu"], report["onnxruntime_providers"]
    table = Table(title="fashiondist doctor", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("this machine")
    table.add_row("CPU", f"{cpu['model']} ({cpu['vendor']})")
    table.add_row(
        "ISA", Text(", ").join(Text.assemble(f"{flag} ", _yes(has)) for flag, has in cpu["isa"].items())
    )
    bf16 = "yes (" + ", ".join(cpu["bf16_flags"]) + ")" if cpu["native_bf16"] else "no"
    if cpu["bf16_flags"] and not cpu["native_bf16"]:
        bf16 = f"no: {', '.join(cpu['bf16_flags'])} held off by {cpu['held_to']}"
    table.add_row("native bf16", bf16)
    table.add_row(
        "cores",
        f"{cpu['usable_cores']} usable of {cpu['logical_cores']}; torch uses {cpu['torch_threads']} threads",
    )
    gpus = [
        Text.assemble(
            f"{g['index']}: {g['name']}, compute {g['capability']}, {g['memory_bytes'] / 2**30:.0f} GiB, bf16 ",
            _yes(g["bf16"]),
        )
        for g in report["gpus"]
    ]
    table.add_row("GPUs", Text("\n").join(gpus) or f"none (torch CUDA build: {report['cuda'] or 'none'})")
    dist = report["distributed"]
    nccl = Text.assemble(
        _yes(dist["nccl"]), "" if dist["nccl_usable"] or not dist["nccl"] else " (built in; needs a GPU)"
    )
    table.add_row("distributed", Text.assemble("nccl ", nccl, ", gloo ", _yes(dist["gloo"])))
    table.add_row("versions", ", ".join(f"{k} {v or '-'}" for k, v in report["versions"].items()))
    usable = Text(", ").join(Text.assemble(f"{k} ", _yes(v)) for k, v in ort["usable"].items())
    problems = "".join(f"\n{k}: {v}" for k, v in ort["problems"].items())
    table.add_row("onnxruntime", Text.assemble("usable: ", usable, problems))
    reader = report["csv_reader"]
    table.add_row("CSV reader", Text.assemble("compiled: ", _yes(reader["compiled"]), f" ({reader['note']})"))
    kernels = report["cpu_kernels"]
    table.add_row(
        "training kernels", Text.assemble("compiled: ", _yes(kernels["compiled"]), f" ({kernels['note']})")
    )
    acc = report["accelerate_config"]
    config = f"{acc['default_config_file']} ({'present' if acc['exists'] else 'none'})"
    if acc.get("settings"):
        config += "\n" + ", ".join(f"{k}={v}" for k, v in acc["settings"].items())
    if acc["environment"]:
        config += "\n" + ", ".join(f"{k}={v}" for k, v in acc["environment"].items())
    table.add_row("accelerate config", config)
    choice = report["precision_auto"]
    table.add_row("--precision auto", Text.assemble((choice["precision"], "bold"), f": {choice['reason']}"))
    recipe = report["recipe"]
    table.add_row("start with", f"{recipe['path']} ({recipe['why']})\n{recipe['command']}")
    results_console().print(table, highlight=False)
