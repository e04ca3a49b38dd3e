"""PyTorch -> ONNX with the checks that make the file trustworthy.

    report = export_checkpoint("runs/convnet", "model.onnx", images=val_images)   # what `train` calls
    fashiondist export runs/convnet --out model.onnx [--quantize int8] [--tta flip]  # the same, from the CLI

The exported graph is `ProbsHead(model)`: uint8 `pixels` [N, 1, 28, 28] -> the model (which normalises
inside) -> softmax -> float32 `probs` [N, K]; with `--tta flip` it averages the image and its mirror. It is
exported with torch.export (`dynamo=True`) from the unwrapped float32 CPU model in eval mode, with a dynamic
batch dimension (the example batch is 2: an example of 1 would specialise N to 1), as one self-contained
file whose metadata_props say what the model is.

Nothing is written until every check has passed: `onnx.checker` (full check), then onnxruntime against
PyTorch on real validation images at batch sizes 1, 7 and 256 (the probabilities within float32 rounding,
judged on the logits they imply: `parity.parity_verdict`; and every argmax equal). Then the file is written atomically, with `export_report.json` beside it. A failed check
raises FashiondistError and leaves no file.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import json
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

from fashiondist import __version__
from fashiondist.config import Tta
from fashiondist.constants import IMAGE_SHAPE, ONNX_INPUT_NAME, ONNX_OUTPUT_NAME, PIXEL_MAX
from fashiondist.data.atomic import atomic_write
from fashiondist.errors import FashiondistError, InputError
from fashiondist.export.parity import (
    MIN_IMAGES_PER_SIZE,
    PARITY_BATCH_SIZES,
    PARITY_TOLERANCE,
    ParityRow,
    ParityTolerance,
    check_parity,
    ort_cpu_session,
)
from fashiondist.export.quantize import QuantReport, quantize_int8
from fashiondist.models.checkpoint import load_model, unwrap

EXAMPLE_BATCH = 2  # torch.export specialises a dimension whose example size is 0 or 1: keep N >= 2
REPORT_NAME = "export_report.json"

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default log: say nothing."""


class ProbsHead(nn.Module):
    """The exported graph: uint8 pixels [N, 1, 28, 28] -> float32 probabilities [N, K].

    With flip TTA the image and its horizontal mirror go through the model as one batch of 2N and their
    probabilities are averaged, the same policy as the engine's `predict_probs`.
    """

    def __init__(self, model: nn.Module, tta: Tta = Tta.NONE):
        super().__init__()
        self.model = model
        self.tta = Tta(tta)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.tta is Tta.FLIP:
            n = pixels.shape[0]
            both = torch.cat([pixels, pixels.flip(3)])  # [2N, 1, 28, 28]: originals, then mirrors
            probs = self.model(both).float().softmax(dim=1)  # [2N, K]
            return 0.5 * (probs[:n] + probs[n:])
        return self.model(pixels).float().softmax(dim=1)


@dataclass
class ExportReport:
    onnx_path: str
    model: str
    num_classes: int
    opset: int
    tta: str
    file_bytes: int
    export_seconds: float
    parity_tolerance: str
    parity: list[ParityRow]
    metadata: dict[str, str]
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
        out = {k: v for k, v in self.__dict__.items() if k not in ("parity", "int8")}
        out["parity"] = [row.to_dict() for row in self.parity]
        out["parity_passed"] = all(row.passed for row in self.parity)
        out["int8"] = None if self.int8 is None else self.int8.to_dict()
        return out


def model_metadata(meta: Mapping[str, Any], tta: Tta = Tta.NONE) -> dict[str, str]:
    """metadata_props for a checkpoint's `model.json` meta (name, kwargs, num_classes, class_names, metric)."""
    val_acc = (meta.get("metric") or {}).get("val_acc")
    metadata = {
        "fashiondist_version": __version__,
        "model": str(meta["name"]),
        "model_kwargs": json.dumps(meta.get("kwargs") or {}, sort_keys=True),
        "num_classes": str(int(meta["num_classes"])),
        "class_names": json.dumps(list(meta["class_names"])),
        # measured in PyTorch on the run's validation split; "null" when the checkpoint has no metric
        "val_accuracy": json.dumps(None if val_acc is None else float(val_acc)),
        "tta": Tta(tta).value,
        "quantization": "none",
        "input": f"{ONNX_INPUT_NAME}: uint8 [N, {', '.join(map(str, IMAGE_SHAPE))}], pixels 0..{PIXEL_MAX}; "
        "normalisation is inside the graph",
        "output": f"{ONNX_OUTPUT_NAME}: float32 [N, K] class probabilities (softmax)",
    }
    if meta.get("epoch") is not None:
        metadata["epoch"] = str(meta["epoch"])
    return metadata


def to_onnx(
    model: nn.Module, metadata: Mapping[str, str], opset: int | None = None, tta: Tta = Tta.NONE
) -> onnx.ModelProto:
    """Export `ProbsHead(model)` with a dynamic batch; returns the model proto with `metadata` attached.

    `model` is the plain module, float32, on the CPU, in eval mode (`export_model` prepares a copy so).
    """
    head = ProbsHead(model, tta).eval()
    example = torch.zeros(EXAMPLE_BATCH, *IMAGE_SHAPE, dtype=torch.uint8)
    batch = torch.export.Dim("batch")
    try:
        # torch.onnx prints its progress on stdout, which belongs to our results: capture it.
        with contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(
                head,
                (example,),
                dynamo=True,
                input_names=[ONNX_INPUT_NAME],
                output_names=[ONNX_OUTPUT_NAME],
                dynamic_shapes={"pixels": {0: batch}},
                opset_version=opset,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # torch.export / onnxscript raise many types; one line is what the user needs
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FashiondistError(
            f"torch.onnx.export failed for model {metadata.get('model')!r}: {first}"
        ) from err
    proto = program.model_proto
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim0.dim_param:
        raise FashiondistError(
            f"the exported input {ONNX_INPUT_NAME!r} has a fixed batch size {dim0.dim_value}"
        )
    opset_used = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    props = {
        **metadata,
        "opset": str(opset_used),
        "torch_version": torch.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = (
        f"fashiondist {metadata.get('model')} classifier: uint8 pixels [N,1,28,28] -> probs [N,K]"
    )
    return proto


def export_model(
    model: nn.Module,
    out_path: str | os.PathLike,
    *,
    metadata: Mapping[str, str],
    images: np.ndarray,
    opset: int | None = None,
    tta: Tta = Tta.NONE,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
    tolerance: ParityTolerance = PARITY_TOLERANCE,
    min_images: int = MIN_IMAGES_PER_SIZE,
    log: Log | None = None,
) -> ExportReport:
    """Export, check (onnx.checker + parity on uint8 `images` [N, 28, 28]), then write `out_path` atomically."""
    log = log or _quiet
    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        raise InputError(f"{out_path}: the output directory {out_path.parent} does not exist")
    tta = Tta(tta)

    start = time.perf_counter()
    log(f"exporting {metadata.get('model')} to ONNX (torch.export, dynamic batch, tta={tta.value})")
    model = copy.deepcopy(unwrap(model)).float().cpu().eval()  # the caller's model keeps its device and mode
    proto = to_onnx(model, metadata, opset, tta)
    export_seconds = time.perf_counter() - start
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise FashiondistError(
            f"{out_path}: onnx.checker rejected the exported graph: {str(err).splitlines()[0]}"
        ) from None
    blob = proto.SerializeToString()

    log(f"checking onnxruntime against PyTorch on {len(images)} real images, batch sizes {batch_sizes}")
    rows = check_parity(model, ort_cpu_session(blob), images, tta, batch_sizes, min_images, tolerance)
    props = {p.key: p.value for p in proto.metadata_props}
    report = ExportReport(
        onnx_path=str(out_path),
        model=props["model"],
        num_classes=int(props["num_classes"]),
        opset=int(props["opset"]),
        tta=tta.value,
        file_bytes=len(blob),
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
    with atomic_write(out_path) as handle:
        handle.write(blob)
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
    tta: Tta = Tta.NONE,
    quantize: str | None = None,
    max_int8_drop: float = 0.5,
    log: Log | None = None,
) -> ExportReport:
    """Export a checkpoint (run dir, best/ dir or model.safetensors) and write `export_report.json` beside it.

    `images` (uint8 [N, 28, 28], real validation images) drive the parity check. `quantize="int8"` also
    writes `<stem>.int8.onnx`: static QDQ per-channel quantization calibrated on `calibration_images`
    (training images), kept only if its accuracy on (`images`, `labels`) is at most `max_int8_drop` points
    below the float model's; otherwise `report.int8_refusal` says why (the float model stays, no int8 file is
    written; the CLI turns a refusal into exit code 1).
    """
    log = log or _quiet
    out_path = Path(out_path)
    model, meta = load_model(checkpoint)
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
        model, out_path, metadata=model_metadata(meta, tta), images=images, opset=opset, tta=tta, log=log
    )
    if quantize:
        report.int8 = quantize_int8(
            out_path,
            out_path.with_name(f"{out_path.stem}.int8{out_path.suffix or '.onnx'}"),
            calibration_images=calibration_images,
            images=images,
            labels=labels,
            max_drop_points=max_int8_drop,
            log=log,
        )
    write_report(report, out_path.with_name(REPORT_NAME))
    if report.int8_refusal:
        log(report.int8_refusal)
    return report


def write_report(report: ExportReport, path: Path) -> None:
    with atomic_write(path) as handle:
        handle.write((json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n").encode())


@dataclass(frozen=True)
class CheckImages:
    """Real images for the export checks: validation images (parity, accuracy) and training images (int8 calibration)."""

    images: np.ndarray  # uint8 [M, 28, 28]
    labels: np.ndarray | None  # int64 [M], or None for an unlabelled source
    calibration_images: np.ndarray | None  # uint8 [C, 28, 28] from the training part
    description: str


def load_check_images(spec: str, checkpoint: str | os.PathLike, calibration_count: int = 4096) -> CheckImages:
    """The validation split of data source `spec`, as the checkpoint's run made it (val_fraction, seed from its
    config.yaml when there is one), plus up to `calibration_count` training images for int8 calibration
    (MinMax ranges: more images cover the tails better; 4096 kept cnn-dropout within 0.3 points where 1024
    lost 0.8).

    An unlabelled source (a testX.csv) gives its images for the parity check only.
    """
    from fashiondist.data.sources import available_splits, load_data
    from fashiondist.data.split import stratified_split

    data = load_data(spec, split="train" if "train" in available_splits(spec) else "test")
    if data.labels is None:
        return CheckImages(data.images, None, None, f"{len(data.images)} unlabelled images of {data.source}")
    val_fraction, seed = _run_split(Path(checkpoint))
    train_idx, val_idx = stratified_split(data.labels, val_fraction, seed)
    return CheckImages(
        data.images[val_idx],
        data.labels[val_idx],
        data.images[train_idx[:calibration_count]],
        f"{len(val_idx)} validation images of {data.source} (val_fraction {val_fraction}, seed {seed})",
    )


def _run_split(checkpoint: Path) -> tuple[float, int]:
    """(val_fraction, seed) from the run's config.yaml beside or above the checkpoint; TrainConfig's defaults else."""
    import yaml

    from fashiondist.config import TrainConfig

    start = checkpoint if checkpoint.is_dir() else checkpoint.parent
    for directory in (start, start.parent):
        config = directory / "config.yaml"
        if config.is_file():
            data = yaml.safe_load(config.read_text()) or {}
            fraction, seed = (
                data.get("val_fraction", TrainConfig.val_fraction),
                data.get("seed", TrainConfig.seed),
            )
            return float(fraction), int(seed)
    return TrainConfig.val_fraction, TrainConfig.seed


def report_table(report: ExportReport):
    """A rich Table of the parity rows (and the int8 comparison, when there is one)."""
    from rich.table import Table

    table = Table(
        title=f"onnxruntime vs PyTorch: {report.model}, tta {report.tta}, opset {report.opset}",
        caption=f"{report.onnx_path}, {report.file_bytes / 1e6:.2f} MB, tolerance: {report.parity_tolerance}",
    )
    for column in (
        "batch size",
        "images",
        "max |prob diff|",
        "implied logit error",
        "argmax agreement",
        "check",
    ):
        table.add_column(column, justify="right")
    for row in report.parity:
        table.add_row(
            str(row.batch_size),
            str(row.images),
            f"{row.max_abs_diff:.2e}",
            f"{row.max_logit_error:.2e} ({row.worst_ratio:.2g}x allowed)",
            f"{row.argmax_agreement:.2%}",
            "[green]pass[/]" if row.passed else "[red]FAIL[/]",
        )
    if report.int8 is None:
        return table
    q = report.int8
    int8 = Table(title=f"int8 (static QDQ, per-channel) on {q.images} validation images")
    for column in ("model", "accuracy", "img/s (batch 256)", "MB"):
        int8.add_column(column, justify="right")
    int8.add_row(
        "fp32", f"{q.fp32_accuracy:.2%}", f"{q.fp32_images_per_s:,.0f}", f"{report.file_bytes / 1e6:.2f}"
    )
    verdict = (
        "[green]kept[/]"
        if q.accepted
        else f"[red]refused: -{q.drop_points:.2f} pts > {q.max_drop_points:g}[/]"
    )
    int8.add_row(
        f"int8 ({verdict})",
        f"{q.int8_accuracy:.2%}",
        f"{q.int8_images_per_s:,.0f}",
        f"{q.file_bytes / 1e6:.2f}",
    )
    from rich.console import Group

    return Group(table, int8)
