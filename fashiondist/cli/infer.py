"""`fashiondist infer`: a Kaggle submission from a competition CSV and an exported ONNX model.

Runs on onnxruntime alone: this module and everything it imports are torch-free, so the command starts in a
fraction of a second and works where only numpy, pyarrow and onnxruntime are installed.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fashiondist.cli._common import formatter, positive_int, thread_count
from fashiondist.constants import INFER_BATCH_SIZE
from fashiondist.inference.providers import PROVIDER_CHOICES

DESCRIPTION = """\
Predict every row of a competition CSV with an exported ONNX model and write a submission CSV:
`Id,Label`, one row per input row, in input order (add the class probabilities with --probs).
The CSV is read in chunks, so memory stays bounded for any number of rows; a malformed row stops the
run with one line naming the file, line and column, and no output file is written.

examples:
  fashiondist infer testX.csv --model model.onnx --out submission.csv
  fashiondist infer testX.csv.gz --model runs/sweep/model.onnx --probs --out probs.csv
  fashiondist infer train.csv --model model.onnx --out check.csv     # labelled: also prints accuracy
  fashiondist infer testX.csv --model model.onnx --provider cuda --batch-size 4096
  fashiondist infer testX.csv --model model.onnx --provider cuda --io-binding
  fashiondist infer testX.csv --model model.onnx --provider tensorrt --io-binding --trt-cache trt/ --trt-fp16
  fashiondist infer testX.csv --model runs/sweep --out submission.csv  # int8 where accepted and fast here
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="predict a CSV with an ONNX model (onnxruntime) and write Id,Label",
        description=DESCRIPTION,
        formatter_class=formatter(),
    )
    parser.add_argument(
        "csv",
        metavar="CSV",
        help="testX.csv (Id, 784 pixels) or train.csv (Id, Label, 784 pixels); .gz works",
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="MODEL.onnx|RUN_DIR",
        help="a model written by `fashiondist export`, or a run directory: its int8 model when the run's "
        "accuracy gate kept one and this CPU has VNNI/AMX, else its model.onnx",
    )
    parser.add_argument(
        "--fp32",
        action="store_true",
        help="with a run directory: run model.onnx even where int8 would be chosen",
    )
    parser.add_argument(
        "--out", default="submission.csv", metavar="PATH", help="the submission CSV (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=INFER_BATCH_SIZE,
        metavar="N",
        help="images per onnxruntime call (default: %(default)s)",
    )
    parser.add_argument(
        "--provider",
        choices=PROVIDER_CHOICES,
        default="auto",
        help="onnxruntime execution provider; auto takes CUDA when onnxruntime-gpu sees a GPU, else the CPU (default: %(default)s)",
    )
    parser.add_argument(
        "--io-binding",
        action="store_true",
        help="CUDA/TensorRT: bind input and output through onnxruntime's IOBinding (probabilities allocated on the GPU, copied back once per batch)",
    )
    parser.add_argument(
        "--trt-cache",
        default=None,
        metavar="DIR",
        help="TensorRT: keep built engines in DIR and load them next time (trt_engine_cache_path)",
    )
    parser.add_argument(
        "--trt-fp16",
        action="store_true",
        help="TensorRT: allow fp16 kernels (trt_fp16_enable); an fp16 export (`export --precision fp16`) is fp16 on any provider",
    )
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        metavar="N",
        help="CPU threads for onnxruntime (default: one per CPU this process may use: affinity, cgroup quota); "
        "on the CPU each thread runs its own batch, side by side (beyond 8 threads, 8 batches share them)",
    )
    parser.add_argument(
        "--probs", action="store_true", help="also write the class probabilities prob_0..prob_{K-1}"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    from fashiondist.inference.choice import choose_model
    from fashiondist.inference.job import infer_csv
    from fashiondist.inference.providers import GpuOptions
    from fashiondist.inference.session import open_session
    from fashiondist.output_paths import check_output_file

    choice = choose_model(args.model, args.fp32)
    check_output_file(
        args.out, "--out", inputs={"the input CSV": args.csv, "the model": choice.path}
    )  # before any work
    gpu = GpuOptions(args.io_binding, args.trt_cache, args.trt_fp16)
    model = open_session(choice.path, args.provider, args.threads, gpu=gpu)
    with _progress(Path(args.csv), model.provider) as advance:
        result = infer_csv(
            choice.path, args.csv, args.out, args.batch_size, probs=args.probs, on_rows=advance, model=model
        )
    seconds = time.perf_counter() - start
    # After success only: on an error, stderr holds nothing but the one error line.
    print(f"{_describe(model, args.threads)}; {choice.path.name}: {choice.reason}", file=sys.stderr)
    accuracy = f", accuracy {result.accuracy:.2%} on its labels" if result.accuracy is not None else ""
    print(
        f"wrote {result.out}: {result.rows:,} rows in {seconds:.2f} s ({result.rows / seconds:,.0f} rows/s; "
        f"{model.model_name} on {model.provider}){accuracy}"
    )
    return 0


def _describe(model, threads: int | None) -> str:
    """One line: what the model is (from its metadata) and where it ran."""
    meta = model.metadata  # every field checked when the session opened
    facts = [f"{model.num_classes} classes"]
    if model.val_accuracy is not None:
        facts.append(f"val acc {model.val_accuracy:.2%}")
    facts.append(f"tta {meta.get('tta', 'none')}")
    facts.append("int8" if meta.get("quantization", "none") != "none" else "fp32")
    from fashiondist.inference.session import default_threads

    count = (
        f"{threads} threads (--threads)" if threads else f"{default_threads()} threads (one per usable CPU)"
    )
    where = f"{model.provider}, {count}"
    if model.runs > 1:
        where += f", {model.runs} batches at a time"
    return f"model {model.model_name} ({', '.join(facts)}) ran on {where}"


@contextlib.contextmanager
def _progress(csv_path: Path, provider: str) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal (rows counted from the file's lines); else nothing.

    rich is imported only then: a piped or scripted run skips its import time.
    """
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from fashiondist.consoles import log_console

    columns = (
        TextColumn(f"predicting on {provider}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=log_console(), transient=True) as progress:
        task = progress.add_task("rows", total=_count_rows(csv_path))
        yield lambda rows: progress.advance(task, rows)


def _count_rows(path: Path) -> int | None:
    """Data rows of a plain CSV (line ends minus the header), counted at disk speed; None for .gz or on error.

    A line ends at `\\n`, `\\r\\n` or `\\r` (old Mac files), as for the reader: the more common of the two bytes.
    """
    newlines = returns = 0
    if not path.is_file():
        return None  # a pipe (/dev/stdin, <(...)): its bytes are the reader's alone
    try:
        with path.open("rb") as f:
            if f.read(2) == b"\x1f\x8b":
                return None
            f.seek(0)
            for block in iter(lambda: f.read(1 << 24), b""):
                newlines += block.count(b"\n")
                returns += block.count(b"\r")
    except OSError:
        return None  # the reader reports the problem with its own message
    return max(max(newlines, returns) - 1, 0)
