"""`fashiondist export`: a checkpoint to one self-contained ONNX file, verified against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from fashiondist.cli._common import add_data_option, formatter, points
from fashiondist.config import Tta
from fashiondist.run_layout import CONFIG_FILE, RUN_FILE

DESCRIPTION = """\
Export a trained model to ONNX: uint8 `pixels` [N, 1, 28, 28] in, float32 `probs` [N, K] out, the
normalisation inside the graph and the model's facts (variant, classes, validation accuracy) in its
metadata, so a client needs nothing but the file. The file is written only after onnx.checker's full check
and a parity check: onnxruntime against PyTorch on real validation images at batch sizes 1, 7 and 256
(the logits the probabilities imply within float32 rounding, every argmax equal). Then its validation
accuracy is printed beside the one the run recorded, and they must agree: every image the ONNX model
predicts differently from the run is an argmax tie within the run's arithmetic (see
fashiondist/export/agreement.py); otherwise nothing is written. export_report.json is written beside it.

Without --tta the graph applies the TTA the run was validated with; without --data it is checked on the
run's own validation split (its config's data, val_fraction and split seed). An ensemble's members each keep
their own TTA unless --tta names one for all of them; the accuracy to reproduce is then the PyTorch
ensemble's under it, on the same images.

--precision fp16 writes an fp16 graph with the same contract (uint8 in, float32 probs out; the cast to
float32 is inside the graph), by default MODEL.fp16.onnx beside export_report.fp16.json, its parity judged
with a bound in fp16's unit roundoff (fashiondist/export/parity.py). It is meant for GPUs; onnxruntime's
CPU provider runs it too, usually slower than fp32.

--quantize int8 also writes MODEL.int8.onnx (static QDQ, per-channel), calibrated on training images of
--data and kept only if its validation accuracy is within --max-int8-drop points of the float model.

examples:
  fashiondist export runs/convnet --out model.onnx
  fashiondist export runs/convnet/best/model.safetensors --out model.onnx --tta none   # not the run's TTA
  fashiondist export runs/convnet --out model.onnx --quantize int8 --data fashion-mnist
  fashiondist export runs/convnet --precision fp16                # runs/convnet/model.fp16.onnx
  fashiondist export runs/cv5 --out model.onnx                  # a --folds run: its folds as one ensemble
  fashiondist export runs/sweep --ensemble 3 --out model.onnx   # the sweep's 3 best variants, one graph
  fashiondist export runs/a runs/b --out model.onnx             # any runs, averaged in probability space
  fashiondist export runs/a runs/b --tta flip-shift --out model.onnx   # every member under 10 views
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX, checked against PyTorch",
        description=DESCRIPTION,
        formatter_class=formatter(),
    )
    parser.add_argument(
        "checkpoint",
        metavar="RUN_DIR|CHECKPOINT",
        nargs="+",
        help="a run directory, its best/ directory, or a model.safetensors; several runs, a --folds run or "
        "--ensemble K: one ensemble graph (fashiondist/export/ensemble.py)",
    )
    parser.add_argument(
        "--ensemble",
        type=int,
        metavar="K",
        help="export the K best variants of a sweep directory as one graph",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="PATH",
        help="the .onnx file (default: model.onnx in the run directory)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=None,
        metavar="N",
        help="ONNX opset (default: the exporter's, currently 20)",
    )
    parser.add_argument(
        "--tta",
        choices=[t.value for t in Tta],
        default=None,
        help="flip: the graph averages each image and its mirror; flip-shift: also both moved one pixel up, "
        "down, left, right (10 views, 5x flip's cost); for an ensemble, every member's (default: the run's "
        "tta, as it was validated)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "fp16"],
        default="fp32",
        help="the graph's arithmetic; fp16 keeps the uint8 input and float32 output (default: %(default)s)",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="also write an int8 model (static QDQ, per-channel)",
    )
    parser.add_argument(
        "--max-int8-drop",
        type=points,
        default=0.5,
        metavar="POINTS",
        help="refuse the int8 model if its validation accuracy drops by more (default: %(default)s)",
    )
    add_data_option(parser, default=None)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashiondist.consoles import log_console, results_console
    from fashiondist.errors import FashiondistError, InputError
    from fashiondist.export.check_images import load_check_images, run_config
    from fashiondist.export.exporter import check_precision, export_checkpoint, model_file_name
    from fashiondist.export.opsets import check_opset
    from fashiondist.output_paths import check_output_file

    log = log_console()
    check_opset(args.opset)  # before any work: an opset the exporter or onnxruntime cannot take
    check_precision(args.precision, args.quantize)  # before any work (the exporter checks it for its callers)
    if _is_ensemble(args):
        return _run_ensemble(args, log)
    checkpoint = Path(args.checkpoint[0])
    if not checkpoint.exists():
        raise InputError(f"{checkpoint}: no such run directory or checkpoint")
    out = (
        Path(args.out)
        if args.out
        else (checkpoint if checkpoint.is_dir() else checkpoint.parent) / model_file_name(args.precision)
    )
    check_output_file(out, "--out", inputs=_run_files(checkpoint), run_dirs=_resume_dirs(checkpoint))
    checks = load_check_images(args.data or run_config(checkpoint).data, checkpoint)
    log.print(f"checking with {checks.description}", highlight=False)
    report = export_checkpoint(
        checkpoint,
        out,
        images=checks.images,
        labels=checks.labels,
        calibration_images=checks.calibration_images,
        opset=args.opset,
        tta=None if args.tta is None else Tta(args.tta),
        quantize=args.quantize,
        max_int8_drop=args.max_int8_drop,
        precision=args.precision,
        log=lambda message: log.print(message, highlight=False),
    )
    results_console().print(export_table(report))
    if report.int8_refusal:
        raise FashiondistError(
            report.int8_refusal, hint="export without --quantize, or calibrate on more training images"
        )
    return 0


def _run_of(checkpoint: Path) -> Path:
    """The run directory `checkpoint` belongs to: itself, or the directory above it (`RUN/best`)."""
    start = checkpoint if checkpoint.is_dir() else checkpoint.parent
    for directory in (start, start.parent):
        if any((directory / name).is_file() for name in (RUN_FILE, CONFIG_FILE)):
            return directory
    return start


def _run_files(checkpoint: Path) -> list[Path]:
    """What export must not overwrite: the checkpoint and every file of its run but earlier exports (.onnx
    and their report), so `--out RUN/run.json` or `RUN/best/model.safetensors` cannot destroy the run."""
    from fashiondist.export.exporter import PRECISIONS, report_name

    reports = {report_name(precision) for precision in PRECISIONS}
    files = [checkpoint, *(p for p in _run_of(checkpoint).rglob("*") if p.is_file())]
    return [p for p in files if p.suffix != ".onnx" and p.name not in reports]


def _resume_dirs(checkpoint: Path) -> list[Path]:
    """The run's resume state (`last/` and its previous version): nothing export writes belongs there."""
    from fashiondist.engine.run_checkpoint import LAST_DIR, PREVIOUS_LAST

    return [_run_of(checkpoint) / LAST_DIR, _run_of(checkpoint) / PREVIOUS_LAST]


def _is_ensemble(args: argparse.Namespace) -> bool:
    from fashiondist.run_layout import FOLD_PREFIX

    return (
        len(args.checkpoint) > 1
        or args.ensemble is not None
        or (Path(args.checkpoint[0]) / f"{FOLD_PREFIX}0").is_dir()
    )


def _run_ensemble(args: argparse.Namespace, log) -> int:
    from fashiondist.consoles import results_console
    from fashiondist.errors import InputError
    from fashiondist.export.ensemble import export_ensemble
    from fashiondist.output_paths import check_output_file

    paths = [Path(p) for p in args.checkpoint]
    for path in paths:
        if not path.is_dir():
            raise InputError(f"{path}: no such run directory")
    if args.quantize or args.data or args.precision != "fp32":
        raise InputError(
            "an ensemble export takes no --quantize, --data or --precision (each member keeps its own)"
        )
    out = Path(args.out) if args.out else paths[0] / "model.onnx"
    check_output_file(out, "--out")
    tta = None if args.tta is None else Tta(args.tta)
    report = export_ensemble(
        paths, out, top_k=args.ensemble, tta=tta, log=lambda m: log.print(m, highlight=False)
    )
    results_console().print(export_table(report))
    return 0


def export_table(report):
    """A rich Table of the parity rows (and the int8 comparison, when there is one)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=f"onnxruntime vs PyTorch: {report.model}, tta {report.tta}, opset {report.opset}, "
        f"{report.precision}",
        caption=f"{report.onnx_path}, {report.file_bytes / 1e6:.2f} MB, tolerance: {report.parity_tolerance}\n"
        + (
            report.accuracy.describe() if report.accuracy else "validation accuracy: not measured (no labels)"
        ),
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
            Text("pass", style="green") if row.passed else Text("FAIL", style="red"),
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
        Text("kept", style="green")
        if q.accepted
        else Text(f"refused: -{q.drop_points:.2f} pts > {q.max_drop_points:g}", style="red")
    )
    int8.add_row(
        Text.assemble("int8 (", verdict, ")"),
        f"{q.int8_accuracy:.2%}",
        f"{q.int8_images_per_s:,.0f}",
        f"{q.file_bytes / 1e6:.2f}",
    )
    from rich.console import Group

    return Group(table, int8)
