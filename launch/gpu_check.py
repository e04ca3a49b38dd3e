"""One prepared check of fashiondist on a GPU machine: training in fp32/fp16/bf16, export, onnxruntime.

    bash launch/gpu_check.sh                     # every variant, fp32 + fp16 + bf16, ~250 steps each
    GPU_CHECK_SMOKE=1 bash launch/gpu_check.sh   # CPU-only smoke: convnet, a few steps, fp32 + bf16
    python launch/gpu_check.py --models convnet,resnet9 --steps 400     # (PYTHONPATH=repo root)

It drives the command line as a user would (`python -m fashiondist train|export|infer`), so it checks
the shipped code paths, not a copy of them, and needs nothing but the repository on PYTHONPATH and a Python
with torch, accelerate, onnx and onnxruntime (no network, no install):

1. train: one `fashiondist train --model M --precision P --quiet` process per variant and precision,
   the same seed and data, epochs chosen so each run takes about `--steps` optimizer steps; read its
   summary.json and metrics.jsonl: every loss finite, best validation accuracy, images/s (steady state:
   the median over epochs after the first);
2. mixed precision: fp16 and bf16 best validation accuracy within `--max-drop` points (1) of fp32;
3. export: `fashiondist export RUN --out WORK/onnx/M/model.onnx` for each fp32 run (its own
   onnx.checker and CPU parity checks included);
4. onnxruntime: the exported file on the CUDA provider when onnxruntime offers it (else CPU) against the
   PyTorch checkpoint on the validation images: max |probability difference| and argmax agreement,
   with TF32 off on both sides, then images/s of both at batch 1024 with default settings;
5. infer: `fashiondist infer` on the bundled testX.csv.gz with the best fp32 variant, `--provider auto`;
6. GPU inference paths (a GPU only; the smoke mode and a machine without onnxruntime's CUDA provider skip it,
   saying why): that variant exported again with `--precision fp16`, then the fp32 and fp16 graphs on the
   CUDA and TensorRT providers (TensorRT with an engine cache under the work directory, and with
   trt_fp16 for the fp32 graph), each with and without IO binding, side by side: images/s at batch 1024
   and parity against the float32 PyTorch checkpoint with the fp16 bound (TF32, on by default on both
   providers, has fp16's significand).

Results: a table on stdout, logs on stderr; gpu_check.json, gpu_check.md (the table) and gpu_check.log
(the tail of every command's output) under $OUT when it is set, else under the work directory. Exit 0 when
every check passed, 1 otherwise. A time budget (`--budget`, 450 s on a GPU) skips the remaining stages,
saying so, rather than overrunning; on one H100 the full check takes about 5-6 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PRECISION_LABEL = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}
SAMPLE_TEST_CSV = REPO / "fashiondist" / "data" / "sample" / "testX.csv.gz"
SAMPLE_TEST_LABELS = REPO / "fashiondist" / "data" / "sample" / "testY.csv"
LOG_TAIL_LINES = 40  # lines of each command's output kept in gpu_check.log


@dataclass
class GpuPathRow:
    graph: str  # fp32 or fp16 (`export --precision`)
    provider: str  # cuda or tensorrt
    io_binding: bool
    trt_fp16: bool = False
    images_per_s: float | None = None
    parity_ratio: float | None = None  # worst implied logit error / allowed (FP16_PARITY_TOLERANCE)
    argmax_agreement: float | None = None
    ok: bool = False
    problem: str = ""


@dataclass
class CheckConfig:
    smoke: bool
    models: list[str]
    precisions: list[str]  # TrainConfig precision values: no, fp16, bf16
    steps: int  # optimizer steps per training run (about: whole epochs)
    data: str  # a --data source; smoke mode writes a small train.csv from the sample
    val_fraction: float  # a large validation split keeps the fp32-vs-mixed comparison above the noise
    max_drop: float  # points of validation accuracy fp16/bf16 may lose against fp32
    budget: float  # seconds for the whole check
    work: Path
    out: Path
    python: str
    device: str = "cpu"
    ort_providers: list[str] = field(default_factory=list)


@dataclass
class TrainRow:
    model: str
    precision: str
    ok: bool = False
    epochs: int = 0
    steps: int = 0
    best_val_acc: float | None = None
    delta_points: float | None = None  # vs fp32, in accuracy points
    images_per_s: float | None = None  # median over epochs after the first
    losses_finite: bool | None = None
    seconds: float = 0.0  # wall clock of the whole command
    run_dir: str = ""
    problem: str = ""


@dataclass
class OnnxRow:
    model: str
    exported: bool = False
    export_seconds: float = 0.0
    cli_parity_passed: bool | None = None  # `fashiondist export`'s own CPU parity check
    provider: str = ""
    max_abs_diff: float | None = None
    argmax_agreement: float | None = None
    # worst implied logit error / allowed (fashiondist.export.parity.parity_verdict); <= 1 passes
    parity_ratio: float | None = None
    ort_images_per_s: float | None = None
    torch_images_per_s: float | None = None
    ok: bool = False
    problem: str = ""


class Budget:
    def __init__(self, seconds: float):
        self.start = time.monotonic()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- setup ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> CheckConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--smoke",
        action="store_true",
        default=os.environ.get("GPU_CHECK_SMOKE", "") not in ("", "0"),
        help="CPU-sized run: one variant, a few steps, fp32 + bf16 (also GPU_CHECK_SMOKE=1)",
    )
    p.add_argument(
        "--models", help="comma-separated variants (default: every registered one; smoke: convnet)"
    )
    p.add_argument(
        "--precisions", help="comma-separated from no,fp16,bf16 (default: those the device supports)"
    )
    p.add_argument("--steps", type=int, help="optimizer steps per training run (default 250; smoke 12)")
    p.add_argument("--data", default="sample", help="a --data source (default: the bundled sample)")
    p.add_argument("--val-fraction", type=float, default=0.3, help="validation share (default: %(default)s)")
    p.add_argument("--max-drop", type=float, default=1.0, help="allowed fp16/bf16 accuracy loss in points")
    p.add_argument("--budget", type=float, help="seconds for the whole check (default 450; smoke 300)")
    p.add_argument("--work", help="where runs and ONNX files go (default: a new temporary directory)")
    p.add_argument(
        "--out",
        default=os.environ.get("OUT"),
        help="where the JSON/table/log go (default: $OUT, else --work)",
    )
    a = p.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="fashiondist-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    from fashiondist.models.registry import list_models

    models = [
        m.strip()
        for m in (a.models or ("convnet" if a.smoke else ",".join(list_models()))).split(",")
        if m.strip()
    ]
    return CheckConfig(
        smoke=a.smoke,
        models=models,
        precisions=(a.precisions or "").split(",") if a.precisions else [],
        steps=a.steps or (12 if a.smoke else 250),
        data=a.data,
        val_fraction=a.val_fraction,
        max_drop=a.max_drop,
        budget=a.budget or (300.0 if a.smoke else 450.0),
        work=work,
        out=Path(a.out) if a.out else work,
        python=sys.executable,
    )


def environment(cfg: CheckConfig) -> dict[str, Any]:
    """What this machine offers; fills in the device, the precisions and onnxruntime's providers."""
    import accelerate
    import onnx
    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    cfg.device = "cuda" if cuda else "cpu"
    if not cfg.precisions:
        # fp16 autocast is a GPU feature; bf16 needs Ampere or newer on a GPU, and runs (emulated) on any CPU.
        bf16 = torch.cuda.is_bf16_supported() if cuda else True
        cfg.precisions = ["no"] + (["fp16"] if cuda and not cfg.smoke else []) + (["bf16"] if bf16 else [])
    cfg.ort_providers = ort.get_available_providers()
    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "accelerate": accelerate.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": cfg.ort_providers,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpus": torch.cuda.device_count() if cuda else 0,
        "smoke": cfg.smoke,
    }
    if cuda:
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    return env


def prepare_data(cfg: CheckConfig) -> None:
    """Smoke mode trains on a small stratified train.csv of real sample images (fast on two CPU cores)."""
    if not cfg.smoke or cfg.data != "sample":
        return
    from fashiondist.data.csvio import write_competition_csv
    from fashiondist.data.sources import load_data
    from fashiondist.data.split import stratified_split

    sample = load_data("sample")
    keep, _ = stratified_split(sample.labels, 1 - 600 / len(sample.labels), seed=1)
    path = cfg.work / "smoke-train.csv"
    write_competition_csv(path, sample.ids[keep], sample.images[keep], sample.labels[keep])
    cfg.data = str(path)


def train_images(cfg: CheckConfig) -> int:
    from fashiondist.data.sources import load_data

    return round(len(load_data(cfg.data)) * (1 - cfg.val_fraction))


def epochs_for(model: str, steps: int, n_train: int, smoke: bool) -> tuple[int, int]:
    """(epochs, global batch) so that the run takes about `steps` optimizer steps at the variant's own batch."""
    from fashiondist.models.registry import model_recipe

    batch = 64 if smoke else int(model_recipe(model).get("batch_size", 256))
    per_epoch = max(1, n_train // batch)
    return max(1, round(steps / per_epoch)), batch


# --- running commands ------------------------------------------------------------------------------------
class Commands:
    """Runs `python -m fashiondist ...` and keeps the tail of every output for gpu_check.log."""

    def __init__(self, cfg: CheckConfig):
        self.cfg = cfg
        self.log_lines: list[str] = []

    def run(self, label: str, args: list[str], timeout: float) -> tuple[int, str, float]:
        cmd = [self.cfg.python, "-m", "fashiondist", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLCONFIGDIR": str(self.cfg.work / "mpl")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        log(f"{label}: {' '.join(cmd[1:])}")
        start = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(timeout, 1)
            )
            code, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            code, output = 124, f"timed out after {timeout:.0f} s\n{_text(err.stdout)}{_text(err.stderr)}"
        seconds = time.monotonic() - start
        tail = output.strip().splitlines()[-LOG_TAIL_LINES:]
        self.log_lines += [f"===== {label} (exit {code}, {seconds:.1f} s): {' '.join(cmd[1:])}", *tail, ""]
        return code, output, seconds


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def _last_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1][:300]


# --- 1-2: training -----------------------------------------------------------------------------------------
def train_all(cfg: CheckConfig, commands: Commands, budget: Budget) -> list[TrainRow]:
    n_train = train_images(cfg)
    rows = []
    for model in cfg.models:
        epochs, batch = epochs_for(model, cfg.steps, n_train, cfg.smoke)
        for precision in cfg.precisions:
            row = TrainRow(model, PRECISION_LABEL[precision], epochs=epochs)
            rows.append(row)
            if budget.left() < 30:
                row.problem = "skipped: time budget spent"
                continue
            run_dir = cfg.work / "runs" / f"{model}-{row.precision}"
            row.run_dir = str(run_dir)
            args = [
                "train",
                "--model",
                model,
                "--data",
                cfg.data,
                "--epochs",
                str(epochs),
                "--batch-size",
                str(batch),
                "--precision",
                precision,
                "--val-fraction",
                str(cfg.val_fraction),
                "--seed",
                "0",
                "--out",
                str(run_dir),
                "--quiet",
            ]
            code, output, row.seconds = commands.run(
                f"train {model} {row.precision}", args, budget.left() - 15
            )
            read_run(row, run_dir, code, output)
    compare_precisions(rows, cfg.max_drop, enforce=not cfg.smoke)  # a 12-step smoke run is all noise
    return rows


def read_run(row: TrainRow, run_dir: Path, code: int, output: str) -> None:
    metrics_path, summary_path = run_dir / "metrics.jsonl", run_dir / "summary.json"
    epochs = (
        [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        if metrics_path.exists()
        else []
    )
    losses = [m.get(k) for m in epochs for k in ("train_loss", "val_loss")]
    row.losses_finite = bool(losses) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses)
    if epochs:
        row.steps = int(epochs[-1].get("step", 0))
        speeds = [m["images_per_s"] for m in epochs[1:] or epochs if m.get("images_per_s")]
        row.images_per_s = statistics.median(speeds) if speeds else None
    if code != 0:
        row.problem = f"exit {code}: {_last_error(output)}"
        return
    if not summary_path.exists():
        row.problem = "no summary.json"
        return
    summary = json.loads(summary_path.read_text())
    row.best_val_acc = summary.get("best_val_acc")
    row.ok = bool(row.losses_finite) and row.best_val_acc is not None
    if not row.losses_finite:
        row.problem = "a non-finite loss in metrics.jsonl"


def compare_precisions(rows: list[TrainRow], max_drop: float, enforce: bool) -> None:
    """fp16/bf16 best validation accuracy within `max_drop` points of fp32 (reported only when not `enforce`d)."""
    fp32 = {r.model: r.best_val_acc for r in rows if r.precision == "fp32" and r.best_val_acc is not None}
    for r in rows:
        if r.precision == "fp32" or r.best_val_acc is None or r.model not in fp32:
            continue
        r.delta_points = 100 * (r.best_val_acc - fp32[r.model])
        if enforce and abs(r.delta_points) > max_drop:
            r.ok = False
            r.problem = f"{r.delta_points:+.2f} points from fp32 (allowed +-{max_drop:g})"


# --- 3-4: export and onnxruntime ------------------------------------------------------------------------------
def export_all(cfg: CheckConfig, rows: list[TrainRow], commands: Commands, budget: Budget) -> list[OnnxRow]:
    out = []
    for train in rows:
        if train.precision != "fp32":
            continue
        row = OnnxRow(train.model)
        out.append(row)
        if not train.ok:
            row.problem = "no fp32 run to export"
            continue
        if budget.left() < 25:
            row.problem = "skipped: time budget spent"
            continue
        onnx_path = cfg.work / "onnx" / train.model / "model.onnx"
        # `fashiondist export` writes into an existing directory only
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        code, output, row.export_seconds = commands.run(
            f"export {train.model}", ["export", train.run_dir, "--out", str(onnx_path)], budget.left() - 10
        )
        if code != 0 or not onnx_path.exists():
            row.problem = f"export exit {code}: {_last_error(output)}"
            continue
        row.exported = True
        report = onnx_path.with_name("export_report.json")
        if report.exists():
            row.cli_parity_passed = json.loads(report.read_text()).get("parity_passed")
        try:
            check_onnxruntime(cfg, row, Path(train.run_dir), onnx_path)
        except Exception as err:  # a failed check is a result to report, not a crash of the whole check
            row.problem = f"onnxruntime check: {type(err).__name__}: {err}"[:300]
    return out


def check_pixels(cfg: CheckConfig, count: int = 2048):
    """uint8 [N, 1, 28, 28]: the first `count` real images of the data source, the same for every variant."""
    from fashiondist.data.sources import load_data

    data = load_data(cfg.data)
    return data.images[:count, None]  # [N, 1, 28, 28]


def check_onnxruntime(cfg: CheckConfig, row: OnnxRow, run_dir: Path, onnx_path: Path) -> None:
    import numpy as np
    import torch

    from fashiondist.export.parity import PARITY_TOLERANCE, ParityTolerance, parity_verdict
    from fashiondist.models.checkpoint import load_model

    # cuDNN and cuBLAS pick other float32 algorithms (Winograd, split-K) than CPU kernels: 10x the CPU bound,
    # as the old probability bound was (1e-4 on a GPU, 1e-5 on the CPU); not yet measured on a GPU.
    GPU_PARITY_TOLERANCE = ParityTolerance(logit_rtol=1e-4, logit_atol=1e-4)
    pixels = check_pixels(cfg)
    cuda = "CUDAExecutionProvider" in cfg.ort_providers and cfg.device == "cuda"
    row.provider = "cuda" if cuda else "cpu"
    # Parity in strict fp32: TF32 off in both PyTorch (cuDNN convs, matmuls) and onnxruntime's CUDA provider.
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model, _ = load_model(run_dir, device=cfg.device)
        ref = torch_probs(model, pixels, cfg.device)
        strict = ort_session(onnx_path, cuda, tf32=False)
        got = ort_probs(strict, pixels)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    tolerance = PARITY_TOLERANCE if cfg.device == "cpu" else GPU_PARITY_TOLERANCE
    verdict = parity_verdict(ref, got, len(pixels), tolerance)
    row.max_abs_diff, row.argmax_agreement, row.parity_ratio = (
        verdict.max_abs_diff,
        verdict.argmax_agreement,
        verdict.worst_ratio,
    )
    row.ok = verdict.worst_ratio <= 1.0 and row.argmax_agreement >= 0.999
    if not row.ok:
        row.problem = f"onnxruntime vs PyTorch: {verdict.describe()} (tolerance: {tolerance})"
    batch = np.concatenate([pixels] * max(1, 8192 // len(pixels)))[:8192]  # [8192, 1, 28, 28] or fewer
    row.ort_images_per_s = throughput(lambda x: ort_probs(ort_session(onnx_path, cuda), x), batch, cfg.smoke)
    row.torch_images_per_s = throughput(lambda x: torch_probs(model, x, cfg.device), batch, cfg.smoke)


def torch_probs(model, pixels, device: str, batch: int = 1024):
    """The engine's own prediction (`model_probs`, the trainer's validation) on uint8 [N, 1, 28, 28]."""
    import torch

    from fashiondist.engine.evaluate import model_probs

    return model_probs(model, torch.from_numpy(pixels).to(device), batch).cpu().numpy()


_SESSIONS: dict[tuple, Any] = {}


def ort_session(path: Path, cuda: bool, tf32: bool = True):
    """The inference stage's own session (`fashiondist infer`'s): its contract check, a GPU run or an error."""
    from fashiondist.inference.session import open_session

    key = (str(path), cuda, tf32)
    if key not in _SESSIONS:
        _SESSIONS[key] = open_session(path, "cuda" if cuda else "cpu", exact_fp32=not tf32)
    return _SESSIONS[key]


def ort_probs(session, pixels, batch: int = 1024):
    """The inference stage's own batching (`predict_proba`) on uint8 [N, 1, 28, 28]."""
    from fashiondist.inference.predict import predict_proba

    return predict_proba(session, pixels, batch)


def throughput(predict, pixels, smoke: bool) -> float:
    """Images per second of `predict` over `pixels` after one warm-up pass (the best of a few passes)."""
    import torch

    predict(pixels[:1024])  # warm-up: session / cuDNN algorithm selection
    best = 0.0
    for _ in range(1 if smoke else 3):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        predict(pixels)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = max(best, len(pixels) / (time.perf_counter() - start))
    return best


# --- 5: the infer command ---------------------------------------------------------------------------------
def infer_check(
    cfg: CheckConfig, trains: list[TrainRow], onnx_rows: list[OnnxRow], commands: Commands, budget: Budget
) -> dict[str, Any]:
    exported = {r.model for r in onnx_rows if r.exported}
    fp32 = [r for r in trains if r.precision == "fp32" and r.model in exported and r.best_val_acc is not None]
    if not fp32:
        return {"ok": False, "problem": "no exported model"}
    if budget.left() < 10:
        return {"ok": False, "problem": "skipped: time budget spent"}
    best = max(fp32, key=lambda r: r.best_val_acc)
    onnx_path = cfg.work / "onnx" / best.model / "model.onnx"
    sub = cfg.work / "submission.csv"
    code, output, seconds = commands.run(
        "infer",
        ["infer", str(SAMPLE_TEST_CSV), "--model", str(onnx_path), "--out", str(sub), "--provider", "auto"],
        budget.left(),
    )
    result: dict[str, Any] = {"model": best.model, "exit": code, "seconds": round(seconds, 2), "ok": False}
    if code != 0 or not sub.exists():
        result["problem"] = _last_error(output)
        return result
    import pandas as pd

    got = pd.read_csv(sub)
    truth = pd.read_csv(SAMPLE_TEST_LABELS)
    result["rows"] = len(got)
    result["header"] = list(got.columns)
    result["test_accuracy"] = (
        float((got["Label"].to_numpy() == truth["Label"].to_numpy()).mean())
        if len(got) == len(truth)
        else None
    )
    result["ok"] = (
        result["header"] == ["Id", "Label"]
        and len(got) == len(truth)
        and got["Id"].tolist() == truth["Id"].tolist()
    )
    return result


# --- 6: GPU inference paths -------------------------------------------------------------------------------
def gpu_paths_skip_reason(cfg: CheckConfig) -> str | None:
    if cfg.smoke:
        return "smoke mode (CPU-sized run)"
    if cfg.device != "cuda":
        return "no CUDA GPU for torch"
    if "CUDAExecutionProvider" not in cfg.ort_providers:
        return f"onnxruntime has no CUDAExecutionProvider ({', '.join(cfg.ort_providers)})"
    return None


def gpu_paths(
    cfg: CheckConfig, infer: dict[str, Any], trains: list[TrainRow], commands: Commands, budget: Budget
) -> dict[str, Any]:
    """fp32 vs fp16 graphs on CUDA vs TensorRT, with and without IO binding, for the variant `infer` used."""
    reason = gpu_paths_skip_reason(cfg) or (None if infer.get("model") else "no exported model")
    if reason:
        log(f"GPU inference paths: skipped: {reason}")
        return {"skipped": reason, "rows": []}
    train = next(r for r in trains if r.model == infer["model"] and r.precision == "fp32")
    graphs = {"fp32": cfg.work / "onnx" / train.model / "model.onnx"}
    fp16 = graphs["fp32"].with_name("model.fp16.onnx")
    code, output, _ = commands.run(
        f"export {train.model} fp16",
        ["export", train.run_dir, "--precision", "fp16", "--out", str(fp16)],
        max(budget.left() - 10, 1),
    )
    result: dict[str, Any] = {"model": train.model, "fp16_export_exit": code, "rows": []}
    if code == 0 and fp16.exists():
        graphs["fp16"] = fp16
    else:
        result["fp16_problem"] = _last_error(output)
    import numpy as np
    import torch

    from fashiondist.models.checkpoint import load_model

    pixels = check_pixels(cfg)
    model, _ = load_model(Path(train.run_dir), device=cfg.device)
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = torch_probs(model, pixels, cfg.device)  # strict float32 reference
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    batch = np.concatenate([pixels] * max(1, 8192 // len(pixels)))[:8192]  # [8192, 1, 28, 28] or fewer
    for graph, path in graphs.items():
        for provider in ("cuda", "tensorrt"):
            for trt_fp16 in (False, True) if provider == "tensorrt" and graph == "fp32" else (False,):
                for io_binding in (False, True):
                    row = GpuPathRow(graph, provider, io_binding, trt_fp16)
                    result["rows"].append(row)
                    measure_gpu_path(cfg, row, path, ref, pixels, batch, budget)
    result["ok"] = all(r.ok or r.problem.startswith("skipped") for r in result["rows"]) and "fp16" in graphs
    return result


def measure_gpu_path(
    cfg: CheckConfig, row: GpuPathRow, path: Path, ref, pixels, batch, budget: Budget
) -> None:
    from fashiondist.export.parity import FP16_PARITY_TOLERANCE, parity_verdict
    from fashiondist.inference.providers import ORT_PROVIDERS, GpuOptions
    from fashiondist.inference.session import open_session

    if ORT_PROVIDERS[row.provider] not in cfg.ort_providers:
        row.problem = f"skipped: onnxruntime has no {ORT_PROVIDERS[row.provider]}"
        return
    if budget.left() < (90 if row.provider == "tensorrt" else 20):  # a TensorRT engine build takes a while
        row.problem = "skipped: time budget spent"
        return
    cache = None
    if row.provider == "tensorrt":
        cache = cfg.work / "trt-cache"
        cache.mkdir(parents=True, exist_ok=True)
    options = GpuOptions(row.io_binding, str(cache) if cache else None, row.trt_fp16)
    try:
        session = open_session(path, row.provider, gpu=options)
        verdict = parity_verdict(ref, ort_probs(session, pixels), len(pixels), FP16_PARITY_TOLERANCE)
        row.parity_ratio, row.argmax_agreement = verdict.worst_ratio, verdict.argmax_agreement
        row.images_per_s = throughput(lambda x: ort_probs(session, x), batch, cfg.smoke)
        row.ok = verdict.passed
        if not row.ok:
            row.problem = f"vs PyTorch: {verdict.describe()} (tolerance: {FP16_PARITY_TOLERANCE})"
    except Exception as err:  # one failed path is a result to report, not a crash of the whole check
        row.problem = f"{type(err).__name__}: {err}"[:300]


# --- report ----------------------------------------------------------------------------------------------------
def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def tables(
    trains: list[TrainRow],
    onnx_rows: list[OnnxRow],
    infer: dict[str, Any],
    paths: dict[str, Any] | None = None,
) -> str:
    lines = [
        "| model | precision | epochs | steps | best val acc | vs fp32 (points) | train img/s | losses finite | ok |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in trains:
        lines.append(
            f"| {r.model} | {r.precision} | {r.epochs} | {r.steps} | {_fmt(r.best_val_acc, '.4f')} | "
            f"{_fmt(r.delta_points, '+.2f')} | {_fmt(r.images_per_s, ',.0f')} | {_fmt(r.losses_finite, '')} | "
            f"{'yes' if r.ok else 'NO: ' + r.problem} |"
        )
    lines += [
        "",
        "| model | export s | export parity | ORT provider | max abs dp | argmax agree | ORT img/s | torch img/s | ok |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in onnx_rows:
        lines.append(
            f"| {r.model} | {r.export_seconds:.1f} | {_fmt(r.cli_parity_passed, '')} | {r.provider or '-'} | "
            f"{_fmt(r.max_abs_diff, '.1e')} | {_fmt(r.argmax_agreement, '.4f')} | {_fmt(r.ort_images_per_s, ',.0f')} | "
            f"{_fmt(r.torch_images_per_s, ',.0f')} | {'yes' if r.ok else 'NO: ' + r.problem} |"
        )
    lines += [
        "",
        f"infer ({infer.get('model', '-')}, --provider auto): "
        + ("ok" if infer.get("ok") else f"NO: {infer.get('problem', '')}")
        + (
            f", test accuracy {infer['test_accuracy']:.4f} on the sample's 1,000 test images"
            if infer.get("test_accuracy") is not None
            else ""
        ),
    ]
    paths = paths or {"skipped": "not run", "rows": []}
    if paths.get("skipped"):
        return "\n".join([*lines, "", f"GPU inference paths: skipped: {paths['skipped']}"])
    lines += [
        "",
        f"GPU inference paths ({paths.get('model')}, batch 1024; parity vs float32 PyTorch, fp16 bound)",
        "",
        "| graph | provider | trt fp16 | IO binding | img/s | parity (x allowed) | argmax agree | ok |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in paths["rows"]:
        lines.append(
            f"| {r.graph} | {r.provider} | {r.trt_fp16} | {r.io_binding} | {_fmt(r.images_per_s, ',.0f')} | "
            f"{_fmt(r.parity_ratio, '.2g')} | {_fmt(r.argmax_agreement, '.4f')} | {'yes' if r.ok else 'NO: ' + r.problem} |"
        )
    if paths.get("fp16_problem"):
        lines.append(f"fp16 export: NO: {paths['fp16_problem']}")
    return "\n".join(lines)


def write_outputs(cfg: CheckConfig, result: dict[str, Any], table: str, commands: Commands) -> None:
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (cfg.out / "gpu_check.md").write_text(table + "\n")
    (cfg.out / "gpu_check.log").write_text("\n".join(commands.log_lines) + "\n")
    log(f"wrote {cfg.out / 'gpu_check.json'}, gpu_check.md, gpu_check.log")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    budget = Budget(cfg.budget)
    env = environment(cfg)
    log(
        f"{env['device']}, torch {env['torch']}, onnxruntime {env['onnxruntime']} {env['onnxruntime_providers']}; "
        f"models {','.join(cfg.models)}; precisions {','.join(cfg.precisions)}; work {cfg.work}"
    )
    prepare_data(cfg)
    commands = Commands(cfg)
    trains = train_all(cfg, commands, budget)
    onnx_rows = export_all(cfg, trains, commands, budget)
    infer = infer_check(cfg, trains, onnx_rows, commands, budget)
    paths = gpu_paths(cfg, infer, trains, commands, budget)
    ok = all(r.ok for r in trains) and all(r.ok for r in onnx_rows) and bool(infer.get("ok"))
    ok = ok and (bool(paths.get("skipped")) or bool(paths.get("ok")))
    result = {
        "ok": ok,
        "elapsed_seconds": round(budget.elapsed(), 1),
        "environment": env,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "train": [asdict(r) for r in trains],
        "onnx": [asdict(r) for r in onnx_rows],
        "infer": infer,
        "gpu_paths": {**paths, "rows": [asdict(r) for r in paths["rows"]]},
    }
    table = tables(trains, onnx_rows, infer, paths)
    print(table)
    print(f"\ngpu_check: {'PASSED' if ok else 'FAILED'} in {budget.elapsed():.0f} s")
    write_outputs(cfg, result, table, commands)
    if not os.environ.get("GPU_CHECK_KEEP_WORK") and cfg.out != cfg.work:
        shutil.rmtree(cfg.work / "runs", ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
