"""A checkpoint to a checked ONNX file (and an int8 one on request), with `export_report.json` beside it.

    report = export_checkpoint("runs/convnet", "model.onnx", images=val_images)   # what `train` calls
    fashiondist export runs/convnet --out model.onnx [--quantize int8] [--tta none|flip]  # the same, from the CLI

The graph and its checks live in `export/graph.py`. Nothing is written until every check has passed:
`onnx.checker` (full check), then onnxruntime against PyTorch on real validation images at batch sizes 1, 7
and 256 (the probabilities within float32 rounding,
judged on the logits they imply by `parity.parity_verdict`, and every argmax equal), and with labels the ONNX
model's validation accuracy against the run's (`agreement.compare_accuracy`). Then the file is written
atomically, with `export_report.json` beside it. A failed check raises FashiondistError and leaves no file.
Without `tta`, a checkpoint is exported with the TTA its run was validated with.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from fashiondist.atomic_io import write_bytes, write_json
from fashiondist.config import Tta
from fashiondist.engine.evaluate import model_probs
from fashiondist.engine.run_record import find_run_record
from fashiondist.errors import FashiondistError, InputError
from fashiondist.export.agreement import (
    AccuracyAgreement,
    ValidationRecord,
    compare_accuracy,
    margin_error,
    mixed_format,
    read_validation_record,
)
from fashiondist.export.check_images import run_config
from fashiondist.export.graph import (
    MIN_IMAGES_PER_SIZE,
    PARITY_BATCH_SIZES,
    check_parity,
    model_metadata,
    to_onnx,
)
from fashiondist.export.parity import PARITY_TOLERANCES, ParityRow, ParityTolerance
from fashiondist.export.quantize import QuantReport, quantize_int8
from fashiondist.inference.choice import int8_path
from fashiondist.inference.predict import predict_proba
from fashiondist.inference.session import open_model_bytes
from fashiondist.models.checkpoint import load_model, resolve_model_dir, unwrap

REPORT_NAME = "export_report.json"
# The graph's arithmetic; its input (uint8) and output (float32) are the same in both.
PRECISIONS = ("fp32", "fp16")
_ERROR_BATCH = 1024  # images per forward when measuring the run's rounding (`_autocast_error`)


def report_name(precision: str = "fp32") -> str:
    """The report beside an export: `export_report.json`, `export_report.fp16.json` for an fp16 graph."""
    return REPORT_NAME if precision == "fp32" else f"export_report.{precision}.json"


def model_file_name(precision: str = "fp32") -> str:
    """The default export file in a run directory: `model.onnx`, `model.fp16.onnx` for an fp16 graph."""
    return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"


def check_precision(precision: str, quantize: str | None = None) -> None:
    """InputError for a graph precision the exporter lacks, or for int8 asked of a graph that is not fp32."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r}: not one of {', '.join(PRECISIONS)}")
    if quantize and precision != "fp32":
        raise InputError(
            f"--quantize int8 is calibrated from the fp32 graph: export it without --precision {precision}"
        )


Log = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default log: say nothing."""


@dataclass
class ExportReport:
    onnx_path: str
    model: str
    num_classes: int
    opset: int
    tta: str
    file_bytes: int
    precision: str  # fp32, or fp16: weights and activations in fp16, cast back to float32 before the softmax
    export_seconds: float
    parity_tolerance: str
    parity: list[ParityRow]
    metadata: dict[str, str]
    accuracy: AccuracyAgreement | None = None  # the ONNX model's validation accuracy beside the run's
    int8: QuantReport | None = None

    @property
    def max_abs_diff(self) -> float:
        return max(row.max_abs_diff for row in self.parity)

    @property
    def int8_refusal(self) -> str | None:
        """Why the int8 model was refused (the float model stays), or None when it was kept or not asked for."""
        q = self.int8
        if q is None or q.accepted:
            return None
        return (
            f"int8 model refused: validation accuracy {q.int8_accuracy:.2%} vs {q.fp32_accuracy:.2%} in float32, "
            f"a drop of {q.drop_points:.2f} points > {q.max_drop_points:g}; kept {self.onnx_path}, wrote no int8 file"
        )

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("parity", "accuracy", "int8")}
        out["parity"] = [row.to_dict() for row in self.parity]
        out["parity_passed"] = all(row.passed for row in self.parity)
        out["accuracy"] = None if self.accuracy is None else self.accuracy.to_dict()
        out["int8"] = None if self.int8 is None else self.int8.to_dict()
        return out


def _autocast_error(model: nn.Module, images: np.ndarray, tta: Tta, record: ValidationRecord | None) -> float:
    """`agreement.margin_error` of the float32 `model` under the run's autocast format (bf16, fp16) on the CPU,
    on the images judged: how far the run's rounding moves this model's margins (export.agreement's module
    doc). 0 when there is no verdict to make or the run was float32."""
    fmt = mixed_format(record.precision) if record and record.tta == tta.value else None
    if fmt is None:
        return 0.0
    dtype = torch.bfloat16 if fmt == "bf16" else torch.float16
    pixels = torch.as_tensor(np.require(images, requirements="CW")).unsqueeze(1)  # [N, 1, H, W] uint8
    with torch.no_grad():
        exact = model_probs(model, pixels, _ERROR_BATCH, tta)
        rounded = model_probs(model, pixels, _ERROR_BATCH, tta, lambda: torch.autocast("cpu", dtype=dtype))
    return margin_error(exact.double().numpy(), rounded.double().numpy())


def export_model(
    model: nn.Module,
    out_path: str | os.PathLike,
    *,
    metadata: Mapping[str, str],
    images: np.ndarray,
    labels: np.ndarray | None = None,
    record: ValidationRecord | None = None,
    opset: int | None = None,
    tta: Tta = Tta.NONE,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
    tolerance: ParityTolerance | None = None,
    min_images: int = MIN_IMAGES_PER_SIZE,
    precision: str = "fp32",
    log: Log | None = None,
) -> ExportReport:
    """Export, check (onnx.checker + parity on uint8 `images` [N, 28, 28]), then write `out_path` atomically.

    `precision="fp16"` exports a `.half()` copy: the model normalises into its buffers' dtype (fp16) and
    `ProbsHead` casts the logits to float32 before the softmax, so the contract (uint8 `pixels`, float32
    `probs`) is the fp32 graph's. Simpler than rewriting the proto (onnxconverter-common is not a dependency):
    torch.export sees the fp16 model as it is. Parity is still against the float32 PyTorch model, judged
    with `parity.FP16_PARITY_TOLERANCE` unless `tolerance` is given.

    With `labels` (int64 [N], the run's validation split) the ONNX model's accuracy on `images` is reported
    beside the run's `record`, and a disagreement (`export.agreement`) refuses the export like a failed check.
    """
    log = log or _quiet
    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        raise InputError(f"{out_path}: the output directory {out_path.parent} does not exist")
    tta = Tta(tta)
    check_precision(precision)
    tolerance = tolerance or PARITY_TOLERANCES[precision]

    start = time.perf_counter()
    log(
        f"exporting {metadata.get('model')} to ONNX (torch.export, dynamic batch, tta={tta.value}, {precision})"
    )
    model = copy.deepcopy(unwrap(model)).float().cpu().eval()  # the caller's model keeps its device and mode
    graph_model = copy.deepcopy(model).half() if precision == "fp16" else model
    proto = to_onnx(graph_model, {**metadata, "precision": precision}, opset, tta)
    export_seconds = time.perf_counter() - start
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise FashiondistError(
            f"{out_path}: onnx.checker rejected the exported graph: {str(err).splitlines()[0]}"
        ) from None
    blob = proto.SerializeToString()

    log(f"checking onnxruntime against PyTorch on {len(images)} real images, batch sizes {batch_sizes}")
    session = open_model_bytes(blob, out_path)
    rows = check_parity(model, session, images, tta, batch_sizes, min_images, tolerance)
    props = {p.key: p.value for p in proto.metadata_props}
    report = ExportReport(
        onnx_path=str(out_path),
        model=props["model"],
        num_classes=int(props["num_classes"]),
        opset=int(props["opset"]),
        tta=tta.value,
        file_bytes=len(blob),
        precision=precision,
        export_seconds=round(export_seconds, 2),
        parity_tolerance=str(tolerance),
        parity=rows,
        metadata=props,
    )
    failed = [row for row in rows if not row.passed]
    if failed:
        worst = "; ".join(r.describe() for r in failed)
        raise FashiondistError(
            f"{out_path}: onnxruntime disagrees with PyTorch ({worst}; tolerance: {tolerance}); nothing written"
        )
    if labels is not None:
        graph_rtol = 0.0 if precision == "fp32" else tolerance.logit_rtol  # fp16: its own rounding adds
        measured = _autocast_error(model, images, tta, record)
        report.accuracy = compare_accuracy(
            predict_proba(session, images), labels, record, tta.value, graph_rtol, measured
        )
        log(report.accuracy.describe())
        if report.accuracy.agrees is False:
            raise FashiondistError(
                f"{out_path}: the ONNX model does not reproduce the run's validation accuracy "
                f"({report.accuracy.describe()}); nothing written",
                hint="export with the run's --tta, from the run's best/ checkpoint, checked on the run's --data",
            )
    write_bytes(out_path, blob)
    log(f"wrote {out_path} ({len(blob) / 1e6:.2f} MB)")
    return report


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    calibration_images: np.ndarray | None = None,
    opset: int | None = None,
    tta: Tta | None = None,
    quantize: str | None = None,
    max_int8_drop: float = 0.5,
    precision: str = "fp32",
    log: Log | None = None,
) -> ExportReport:
    """Export a checkpoint (run dir, best/ dir or model.safetensors) and write `export_report.json` beside it.

    `images` (uint8 [N, 28, 28], real validation images) drive the parity check; with their `labels` the
    ONNX model's accuracy must agree with the run's (`export.agreement`). `tta` None: the TTA the run was
    validated with (its best/model.json, else its config.yaml), so the file scores what the run reported.
    `quantize="int8"` also
    writes `<stem>.int8.onnx`: static QDQ per-channel quantization calibrated on `calibration_images`
    (training images), kept only if its accuracy on (`images`, `labels`) is at most `max_int8_drop` points
    below the float model's; otherwise `report.int8_refusal` says why (the float model stays, no int8 file is
    written; the CLI turns a refusal into exit code 1).
    """
    log = log or _quiet
    out_path = Path(out_path)
    model, meta = load_model(checkpoint)
    model_dir = resolve_model_dir(checkpoint)
    record = read_validation_record(model_dir, meta, run_config(model_dir).tta.value)
    tta = Tta(record.tta) if tta is None else Tta(tta)
    check_precision(precision, quantize)
    if quantize not in (None, "int8"):
        raise InputError(f"--quantize {quantize!r}: the only quantization is int8")
    if quantize and (labels is None or calibration_images is None):
        raise InputError(
            "--quantize int8 needs labelled validation images and training images for calibration"
        )
    if quantize and labels.max() >= int(meta["num_classes"]):
        raise InputError(
            f"--quantize int8: the check images have labels up to {labels.max()} but the model has "
            f"{meta['num_classes']} classes; check it on data labelled like its training data (--data)"
        )
    report = export_model(
        model, out_path, metadata=model_metadata(meta, tta, run=find_run_record(checkpoint)), images=images,
        labels=labels, record=record, opset=opset, tta=tta, precision=precision, log=log,
    )  # fmt: skip
    if quantize:
        report.int8 = quantize_int8(
            out_path,
            int8_path(out_path),
            calibration_images=calibration_images,
            images=images,
            labels=labels,
            max_drop_points=max_int8_drop,
            log=log,
        )
    write_export_report(report, out_path.with_name(report_name(precision)))
    if report.int8_refusal:
        log(report.int8_refusal)
    return report


def write_export_report(report: ExportReport, path: Path) -> Path:
    return write_json(path, report.to_dict())
