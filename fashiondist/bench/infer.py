"""`bench infer`: inference images/s of onnxruntime (fp32, int8) against PyTorch eager, and the end-to-end race of
`fashiondist infer` against a plain pandas + PyTorch script.

Throughput: the CSV's images, in memory, through each engine at each batch size: onnxruntime through the
product's own session (`fashiondist.inference.open_session`), PyTorch eager as `ProbsHead(model)` (the graph
that was exported: model, softmax, the same TTA) under `torch.inference_mode()`, numpy in and out like the
session. The eager model is rebuilt from the checkpoint the ONNX file came from: `--checkpoint`, else a run
directory beside the file (`fashiondist export RUN` writes RUN/model.onnx; a sweep's best.json names its run),
else fresh weights for the architecture in the file's metadata (same speed; the JSON says which).

End to end: each as its own process, timed from start to exit with its output file written: `python -m
fashiondist infer CSV --model X.onnx --out ...` (and the same with the `--int8` model, when given) against
`python predict_pandas_torch.py CSV CHECKPOINT OUT` and its peer `python predict_pandas_onnxruntime.py CSV
X.onnx OUT` (fashiondist/bench/user_script.py), interleaved. All write Id,Label; the benchmark checks the Ids
match and reports how often the labels agree. Beside them, `onnxruntime_alone` (and `_int8`): every image
already in memory through the product's session and `predict_proba` at infer's batch size, in this process:
the floor no reader can beat, so `fashiondist_infer/onnxruntime_alone` says what reading and writing add.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashiondist.bench.child_process import child_env, last_line
from fashiondist.bench.stats import Stat, calls_for, rotation, timed, torch_threads
from fashiondist.bench.user_script import write_ort_script, write_script
from fashiondist.constants import IMAGE_SHAPE, INFER_BATCH_SIZE
from fashiondist.errors import FashiondistError, InputError

ORT_FP32 = "onnxruntime_fp32"
ORT_INT8 = "onnxruntime_int8"
EAGER = "torch_eager"
INFER = "fashiondist_infer"
INFER_INT8 = "fashiondist_infer_int8"
SCRIPT = "pandas_torch_script"
ORT_SCRIPT = "pandas_onnxruntime_script"
ORT_ALONE = (
    "onnxruntime_alone"  # the model's own floor: every image in memory through the session, nothing else
)
WARMUP_CALLS = 3


@dataclass(frozen=True)
class InferBench:
    """What `bench infer` measures."""

    model: Path
    csv: Path
    int8: Path | None = None
    checkpoint: Path | None = None
    batch_sizes: tuple[int, ...] = (1, 64, 256, 1024)
    repeats: int = 3
    min_seconds: float = 0.3  # timed seconds per (engine, batch size) measurement, roughly
    end_to_end: bool = True
    provider: str = "auto"
    threads: int | None = None  # onnxruntime and torch threads alike; None: each library's default

    @property
    def engines(self) -> tuple[str, ...]:
        return (ORT_FP32, *((ORT_INT8,) if self.int8 else ()), EAGER)

    def check(self) -> None:
        for option, path in (("--model", self.model), ("--csv", self.csv), ("--int8", self.int8)):
            if path is not None and not Path(path).is_file():
                raise InputError(f"{option} {path}: no such file")
        if self.repeats < 1:
            raise InputError(f"--repeats {self.repeats}: must be at least 1")
        if self.min_seconds <= 0:
            raise InputError(f"--min-seconds {self.min_seconds}: must be positive")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InputError("--batch-sizes: every batch size must be at least 1")


@dataclass(frozen=True)
class Weights:
    """Where the eager model's weights come from."""

    checkpoint: Path | None  # a model directory (model.safetensors + model.json), or None for fresh weights
    source: str  # how it was found, for the report

    @property
    def trained(self) -> bool:
        return self.checkpoint is not None


def _matches(model_dir: Path, metadata: dict[str, str]) -> bool:
    meta = json.loads((model_dir / "model.json").read_text())
    kwargs = json.loads(metadata.get("model_kwargs", "{}"))
    return (
        meta.get("name") == metadata["model"]
        and meta.get("kwargs", {}) == kwargs
        and str(meta.get("num_classes")) == metadata["num_classes"]
    )


def find_weights(onnx_path: Path, metadata: dict[str, str], checkpoint: Path | None) -> Weights:
    """The checkpoint the ONNX file came from: `checkpoint` (checked against the file's metadata), else a run
    directory beside the file, else none (fresh weights for the same architecture)."""
    from fashiondist.models.checkpoint import resolve_model_dir

    if checkpoint is not None:
        model_dir = resolve_model_dir(checkpoint)
        if not _matches(model_dir, metadata):
            raise InputError(
                f"--checkpoint {checkpoint}: is not the model in {onnx_path} "
                f"({metadata['model']} {metadata.get('model_kwargs', '{}')}, {metadata['num_classes']} classes)"
            )
        return Weights(model_dir, f"--checkpoint {checkpoint}")
    candidates = [onnx_path.parent]
    best = onnx_path.parent / "best.json"
    if best.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):  # an unreadable best.json: look no further
            candidates.append(onnx_path.parent / json.loads(best.read_text())["run_dir"])
    for candidate in candidates:
        try:
            model_dir = resolve_model_dir(candidate)
            if _matches(model_dir, metadata):
                return Weights(model_dir, f"{model_dir} (beside the ONNX file)")
        except (InputError, OSError, ValueError):
            continue
    return Weights(
        None, "fresh weights (no checkpoint found; the architecture from the ONNX metadata, same speed)"
    )


def _eager_model(metadata: dict[str, str], weights: Weights, device: str):
    """ProbsHead(model): what was exported, in PyTorch, in eval mode on `device`."""
    from fashiondist.config import Tta
    from fashiondist.models.checkpoint import load_model
    from fashiondist.models.registry import create_model
    from fashiondist.models.tta import ProbsHead

    if weights.checkpoint is not None:
        model, _ = load_model(weights.checkpoint)
    else:
        model = create_model(
            metadata["model"], int(metadata["num_classes"]), **json.loads(metadata.get("model_kwargs", "{}"))
        )
    return ProbsHead(model.float(), Tta(metadata.get("tta", "none"))).to(device).eval()


def _eager_predict(head, device: str) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def predict(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return head(torch.from_numpy(pixels).to(device)).cpu().numpy()

    return predict


def _batches(pixels: np.ndarray, batch_size: int) -> Callable[[], np.ndarray]:
    """A source of consecutive `batch_size` slices of `pixels`, cycling (tiled when there are fewer images)."""
    if len(pixels) < batch_size:
        pixels = np.resize(pixels, (batch_size, *pixels.shape[1:]))
    starts = itertools.cycle(range(0, len(pixels) - batch_size + 1, batch_size))

    def next_batch() -> np.ndarray:
        start = next(starts)
        return pixels[start : start + batch_size]  # a view: no copy inside the timed loop

    return next_batch


def _throughput(
    bench: InferBench,
    engines: dict[str, Callable[[np.ndarray], np.ndarray]],
    pixels: np.ndarray,
    device: Any,
    log,
) -> list[dict[str, Any]]:
    samples: dict[tuple[int, str], list[float]] = {}
    calls: dict[tuple[int, str], int] = {}
    for repeat in range(bench.repeats):
        for batch_size in bench.batch_sizes:
            for name in rotation(list(engines), repeat):
                predict, source = engines[name], _batches(pixels, batch_size)

                def call(predict=predict, source=source) -> None:
                    predict(source())

                for _ in range(WARMUP_CALLS):
                    call()
                key = (batch_size, name)
                if key not in calls:
                    calls[key] = calls_for(call, bench.min_seconds, device)
                seconds = timed(call, calls[key], device)
                samples.setdefault(key, []).append(calls[key] * batch_size / seconds)
            shown = ", ".join(f"{n} {samples[(batch_size, n)][-1]:,.0f}" for n in engines)
            log(f"repeat {repeat + 1}/{bench.repeats} batch {batch_size}: {shown} images/s")
    rows = []
    for batch_size in bench.batch_sizes:
        got = {n: samples[(batch_size, n)] for n in engines}
        ratios = {f"{ORT_FP32}/{EAGER}": Stat.ratio(got[ORT_FP32], got[EAGER])}
        if ORT_INT8 in got:
            ratios[f"{ORT_INT8}/{ORT_FP32}"] = Stat.ratio(got[ORT_INT8], got[ORT_FP32])
            ratios[f"{ORT_INT8}/{EAGER}"] = Stat.ratio(got[ORT_INT8], got[EAGER])
        rows.append(
            {
                "batch_size": batch_size,
                "calls": {n: calls[(batch_size, n)] for n in engines},
                "images_per_s": {n: Stat.of(v).to_dict() for n, v in got.items()},
                "ratios": {k: v.to_dict() for k, v in ratios.items()},
            }
        )
    return rows


def _run_timed(command: list[str], out: Path, env: dict[str, str], name: str) -> float:
    """Seconds from process start until it has exited with `out` written."""
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not out.is_file():
        last = last_line(done.stderr, "(no message)")
        raise FashiondistError(f"bench infer: {name} failed with exit code {done.returncode}: {last}")
    return seconds


def _infer_command(bench: InferBench, model: Path, out: Path) -> list[str]:
    command = [sys.executable, "-m", "fashiondist", "infer", str(bench.csv), "--model", str(model)]
    command += ["--out", str(out), "--provider", bench.provider]
    return command + (["--threads", str(bench.threads)] if bench.threads else [])


def _read_submission(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)  # [N, 2]: Id, Label


def _alone(session, pixels: np.ndarray) -> Callable[[], float]:
    """Seconds to predict every image in memory with the product's batch loop at infer's batch size."""
    from fashiondist.inference.predict import predict_proba

    def run() -> float:
        start = time.perf_counter()
        predict_proba(session, pixels, INFER_BATCH_SIZE)
        return time.perf_counter() - start

    return run


def _end_to_end(
    bench: InferBench,
    weights: Weights,
    metadata: dict[str, str],
    pixels: np.ndarray,
    sessions: dict[str, Any],
    log,
) -> dict[str, Any]:
    from fashiondist.models.checkpoint import save_model

    env = child_env()
    if bench.threads:  # the script's torch gets the thread count `fashiondist infer --threads` gets
        env["OMP_NUM_THREADS"] = str(bench.threads)
    with tempfile.TemporaryDirectory(prefix="fashiondist-bench-") as tmp:
        tmp = Path(tmp)
        checkpoint = weights.checkpoint
        if checkpoint is None:  # the script needs a checkpoint: save the fresh model the eager timings used
            model = _eager_model(metadata, weights, "cpu").model
            kwargs = json.loads(metadata.get("model_kwargs", "{}"))
            class_names = json.loads(metadata["class_names"])
            checkpoint = save_model(
                tmp / "fresh", model, metadata["model"], kwargs, len(class_names), class_names
            )
        models = {INFER: bench.model, **({INFER_INT8: bench.int8} if bench.int8 else {})}
        outs = {name: tmp / f"{name}.csv" for name in (*models, SCRIPT, ORT_SCRIPT)}
        commands = {name: _infer_command(bench, model, outs[name]) for name, model in models.items()}
        commands[SCRIPT] = [sys.executable, str(write_script(tmp)), str(bench.csv), str(checkpoint)]
        commands[ORT_SCRIPT] = [sys.executable, str(write_ort_script(tmp)), str(bench.csv), str(bench.model)]
        for name in (SCRIPT, ORT_SCRIPT):
            commands[name].append(str(outs[name]))
        runs: dict[str, Callable[[], float]] = {
            name: (lambda name=name: _run_timed(commands[name], outs[name], env, name)) for name in commands
        }
        alone = {INFER: ORT_ALONE, INFER_INT8: f"{ORT_ALONE}_int8"}
        for name in models:
            runs[alone[name]] = _alone(sessions[name], pixels)
        for run in runs.values():  # warm-up: the OS file cache, Python's bytecode cache
            run()
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for repeat in range(bench.repeats):
            for name in rotation(list(runs), repeat):
                seconds[name].append(runs[name]())
            log(
                f"repeat {repeat + 1}/{bench.repeats} end to end: "
                + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items())
            )
        ours = _read_submission(outs[INFER])
        theirs, peer = _read_submission(outs[SCRIPT]), _read_submission(outs[ORT_SCRIPT])
    same_ids = all(
        ours.shape == other.shape and bool((ours[:, 0] == other[:, 0]).all()) for other in (theirs, peer)
    )
    agreement = float((ours[:, 1] == theirs[:, 1]).mean()) if same_ids and weights.trained else None
    ratios = {}
    for name in models:  # > 1: fashiondist infer is that many times faster than the script
        ratios[f"{SCRIPT}/{name}"] = Stat.ratio(seconds[SCRIPT], seconds[name], min).to_dict()
        ratios[f"{ORT_SCRIPT}/{name}"] = Stat.ratio(seconds[ORT_SCRIPT], seconds[name], min).to_dict()
    for name in models:  # >= 1: what reading, validating and writing add to onnxruntime alone
        ratios[f"{name}/{alone[name]}"] = Stat.ratio(seconds[name], seconds[alone[name]], min).to_dict()
    rows = len(pixels)
    return {
        "rows": rows,
        "commands": {name: " ".join(command) for name, command in commands.items()},
        "seconds": {name: Stat.of(s).to_dict() for name, s in seconds.items()},
        "rows_per_s": {name: Stat.of([rows / x for x in s]).to_dict() for name, s in seconds.items()},
        "ratios": ratios,
        "check": {
            "same_ids_in_order": same_ids,
            "label_agreement": agreement,
            "peer_label_agreement": float((ours[:, 1] == peer[:, 1]).mean()) if same_ids else None,
            "note": None
            if weights.trained
            else "fresh weights: the script's labels are not the ONNX model's",
        },
    }


def run_infer_bench(bench: InferBench, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Throughput at every batch size, then (unless turned off) the end-to-end race; the JSON-ready result."""
    bench.check()
    from fashiondist.data.csvio import read_competition_csv
    from fashiondist.inference.session import open_session

    fp32 = open_session(bench.model, bench.provider, bench.threads)
    metadata = fp32.metadata
    weights = find_weights(Path(bench.model), metadata, bench.checkpoint)
    engines: dict[str, Callable[[np.ndarray], np.ndarray]] = {ORT_FP32: fp32.predict_proba}
    sessions = {INFER: fp32}
    if bench.int8 is not None:
        int8 = open_session(bench.int8, bench.provider, bench.threads)
        if int8.model_name != fp32.model_name or int8.num_classes != fp32.num_classes:
            raise InputError(
                f"--int8 {bench.int8}: is {int8.model_name} ({int8.num_classes} classes), not the --model's {fp32.model_name}"
            )
        engines[ORT_INT8] = int8.predict_proba
        sessions[INFER_INT8] = int8
    device = "cuda" if fp32.provider == "CUDAExecutionProvider" else "cpu"
    engines[EAGER] = _eager_predict(_eager_model(metadata, weights, device), device)
    table = read_competition_csv(bench.csv)
    pixels = np.ascontiguousarray(table.images).reshape(-1, *IMAGE_SHAPE)  # [N, 28, 28] -> [N, 1, 28, 28]
    log(
        f"{fp32.model_name} on {fp32.provider}; eager weights: {weights.source}; {len(pixels):,} images from {bench.csv}"
    )
    import torch

    result: dict[str, Any] = {
        "benchmark": "infer",
        "settings": {
            "model": str(bench.model),
            "model_name": fp32.model_name,
            "int8": None if bench.int8 is None else str(bench.int8),
            "csv": str(bench.csv),
            "rows": len(pixels),
            "batch_sizes": list(bench.batch_sizes),
            "repeats": bench.repeats,
            "provider": fp32.provider,
            "onnxruntime_threads": bench.threads or "default (one per core)",
            "torch_threads": bench.threads or torch.get_num_threads(),
            "eager_device": device,
            "eager_weights": weights.source,
            "unit": "images/s (prediction: uint8 pixels in, probabilities out)",
        },
        "throughput": None,
        "end_to_end": None,
    }
    with torch_threads(bench.threads):
        result["throughput"] = _throughput(bench, engines, pixels, torch.device(device), log)
    if bench.end_to_end:
        result["end_to_end"] = _end_to_end(bench, weights, metadata, pixels, sessions, log)
    return result


def infer_tables(result: dict[str, Any], caption: str) -> list[Any]:
    from rich.table import Table

    from fashiondist.bench.report import fmt_rate, fmt_ratio, fmt_seconds

    settings = result["settings"]
    engines = list(result["throughput"][0]["images_per_s"])
    ratio_keys = list(result["throughput"][0]["ratios"])
    table = Table(
        title=f"{settings['model_name']} inference images/s, median and min-max of {settings['repeats']} repeats "
        f"({settings['provider']}; eager on {settings['eager_device']})",
        caption=caption,
    )
    for column in ("batch", *engines, *ratio_keys):
        table.add_column(column.replace("onnxruntime", "ort"), justify="right")
    for row in result["throughput"]:
        table.add_row(
            str(row["batch_size"]),
            *(fmt_rate(Stat.of(row["images_per_s"][e]["samples"])) for e in engines),
            *(fmt_ratio(Stat.from_dict(row["ratios"][k])) for k in ratio_keys),
        )
    tables: list[Any] = [table]
    e2e = result["end_to_end"]
    if e2e:
        race = Table(
            title=f"end to end on {e2e['rows']:,} rows: process start to CSV written "
            "(onnxruntime_alone: the images in memory through the same session); ratios paired per repeat, "
            "and best: each side's fastest repeat"
        )
        columns = (
            "command",
            "seconds",
            "rows/s",
            "x pandas+torch",
            "x pandas+onnxruntime",
            "/ onnxruntime alone",
        )
        for column in columns:
            race.add_column(column, justify="left" if column == "command" else "right")
        for name in e2e["seconds"]:
            keys = (f"{SCRIPT}/{name}", f"{ORT_SCRIPT}/{name}")
            keys += tuple(k for k in e2e["ratios"] if k.startswith(f"{name}/{ORT_ALONE}"))
            shown = [e2e["ratios"].get(k) for k in keys] + [None] * (3 - len(keys))
            race.add_row(
                name,
                fmt_seconds(Stat.of(e2e["seconds"][name]["samples"])),
                fmt_rate(Stat.of(e2e["rows_per_s"][name]["samples"])),
                *(fmt_ratio(Stat.from_dict(r)) if r else "" for r in shown[:3]),
            )
        tables.append(race)
    return tables
