"""Which of a run's models `infer RUN_DIR` runs: the int8 one where it is both accepted and fast here.

A run directory holds `model.onnx` and, when `--quantize int8` passed the accuracy gate, `model.int8.onnx`
(the export stage writes the int8 file only when its validation accuracy held; a refused one never reaches
the disk). int8 is the default only where the CPU has int8 dot-product instructions (VNNI or AMX), which
onnxruntime's U8S8 kernels use: there the int8 model ran 1.35-1.73x faster than fp32 (cnn-dropout, 2-core
Xeon with AVX-512 VNNI and AMX). Without them, int8 is emulated with 16-bit multiplies and its speed-up is
not one we measured, so fp32 stays. `--fp32` keeps fp32 anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fashiondist.errors import InputError
from fashiondist.hardware import read_cpu
from fashiondist.run_layout import MODEL_FILE

INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # /proc/cpuinfo flags


@dataclass(frozen=True)
class ModelChoice:
    path: Path
    reason: str  # one clause for the log line


def int8_path(fp32_path: Path) -> Path:
    """Where the export stage writes the int8 twin of `fp32_path`: model.onnx -> model.int8.onnx."""
    return fp32_path.with_name(f"{fp32_path.stem}.int8{fp32_path.suffix or '.onnx'}")


def int8_flags() -> list[str]:
    flags = read_cpu().flags
    return [flag for flag in INT8_DOT_PRODUCT_FLAGS if flag in flags]


def choose_model(model: str | Path, fp32: bool = False, flags: list[str] | None = None) -> ModelChoice:
    """The .onnx file to run for `--model`: a file is itself; a run directory gives its accepted int8 model
    where this CPU has int8 dot products (`flags`, read from /proc/cpuinfo when None), else its fp32 one."""
    model = Path(model)
    if not model.is_dir():
        return ModelChoice(model, "the file given")
    fp32_path = model / MODEL_FILE
    if not fp32_path.is_file():
        raise InputError(
            f"--model {model}: a directory without {MODEL_FILE}",
            hint=f"export the run first (`fashiondist export {model}`) or pass the .onnx file",
        )
    int8 = int8_path(fp32_path)
    if not int8.is_file():
        return ModelChoice(fp32_path, "fp32: the run has no accepted int8 model")
    if fp32:
        return ModelChoice(fp32_path, "fp32: --fp32")
    flags = int8_flags() if flags is None else flags
    if not flags:
        return ModelChoice(fp32_path, "fp32: this CPU has no int8 dot products (VNNI, AMX)")
    return ModelChoice(int8, f"int8: accepted by the run's accuracy gate, and this CPU has {'+'.join(flags)}")
