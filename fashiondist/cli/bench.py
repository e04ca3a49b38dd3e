"""`fashiondist bench`: speed measured side by side in one run, shown as ratios (train, infer, time-to-accuracy)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fashiondist.cli._common import add_data_option, formatter, positive_int
from fashiondist.config import Precision
from fashiondist.inference.providers import PROVIDER_CHOICES
from fashiondist.models.registry import list_models

DESCRIPTION = """\
Benchmarks that measure compared variants side by side in one run and print ratios: medians over
--repeats with min-max, the variants interleaved within each repeat, warm-up excluded, the machine
(CPU, cores, load, GPU, versions, threads) saved with every result. Tables go to stdout, progress to
stderr, everything to --json FILE.

examples:
  fashiondist bench train --models cnn-dropout,convnet --precision no,bf16 --json bench-train.json
  fashiondist bench infer --model runs/sweep/model.onnx --csv testX.csv --int8 runs/sweep/model.int8.onnx
  fashiondist bench time-to-accuracy --recipe convnet --data fashion-mnist --targets 0.90,0.91,0.92,0.93
"""

TRAIN_DESCRIPTION = """\
Training images/s of the engine's device-resident pipeline (TrainBatches + on-device augmentation + the
trainer's accelerate step), of the bare model step on one ready batch (the ceiling), and of a conventional
torch DataLoader over a per-sample Dataset with torchvision transforms (what most users write), for each
model and precision; with --keras PYTHON, of the notebook's own Keras model too, trained by Keras under
that interpreter. Prints engine/bare, engine/DataLoader (and engine/Keras), and each mixed precision over fp32.

examples:
  fashiondist bench train --models cnn-dropout --batch-size 128 --precision bf16
  fashiondist bench train --models cnn-dropout,convnet --precision no,bf16 --loader-workers 0,2 --json train.json
  fashiondist bench train --models convnet --data ../shared/data/fashion-mnist --steps 200
  fashiondist bench train --models cnn-dropout --precision bf16 --keras tf-venv/bin/python
"""

INFER_DESCRIPTION = """\
Inference images/s of onnxruntime fp32 (and int8 with --int8) against PyTorch eager at each batch size,
then the end-to-end race: `fashiondist infer` against a plain pandas + PyTorch script and a plain pandas +
onnxruntime script doing the same job, each as its own process, from process start to the CSV written,
interleaved, beside onnxruntime alone on the images in memory (the floor no reader can beat). The eager model is rebuilt from --checkpoint,
else from a run directory beside the ONNX file, else with fresh weights from the file's metadata.

examples:
  fashiondist bench infer --model runs/convnet/model.onnx --csv testX.csv
  fashiondist bench infer --model model.onnx --int8 model.int8.onnx --csv testX.csv --checkpoint runs/convnet
  fashiondist bench infer --model model.onnx --csv testX.csv --batch-sizes 256 --no-end-to-end
"""

ACCURACY_DESCRIPTION = """\
Runs `fashiondist train` as a child process and reports the wall seconds from its start until the
validation accuracy first reaches each target (the end of that epoch), with the startup time and the
share spent in the training loop. --recipe is a model name (its registry recipe) or an experiment YAML.

examples:
  fashiondist bench time-to-accuracy --recipe convnet --data fashion-mnist --targets 0.90,0.91,0.92,0.93
  fashiondist bench time-to-accuracy --recipe launch/experiments/fashion-mnist-best.yaml --repeats 3
  fashiondist bench time-to-accuracy --recipe cnn-dropout --epochs 5 --precision bf16 --out runs/tta
"""


def _list_of(convert: Callable[[str], object], check: Callable[[object], str | None] | None = None):
    """An argparse type for `a,b,c`: each item converted and checked; the list deduplicated, order kept."""

    def parse(text: str) -> tuple:
        items = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            try:
                item = convert(part)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{part!r} is not {getattr(convert, '__name__', 'valid')}"
                ) from None
            problem = check(item) if check else None
            if problem:
                raise argparse.ArgumentTypeError(f"{part!r}: {problem}")
            items.append(item)
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list")
        return tuple(dict.fromkeys(items))

    return parse


def _choice(allowed: list[str]) -> Callable[[object], str | None]:
    return lambda item: None if item in allowed else f"choose from {', '.join(allowed)}"


def _model_list(text: str) -> tuple:
    if text.strip() == "all":
        return tuple(list_models())
    return _list_of(str, _choice(list_models()))(text)


_PRECISIONS = [p.value for p in Precision]
_precision_list = _list_of(str, _choice(_PRECISIONS))
_batch_sizes = _list_of(int, lambda n: None if n >= 1 else "must be at least 1")
_worker_counts = _list_of(int, lambda n: None if n >= 0 else "must be >= 0")
_targets = _list_of(float, lambda t: None if 0.0 < t <= 1.0 else "an accuracy is a fraction in (0, 1]")


def _common(parser: argparse.ArgumentParser, repeats: int) -> None:
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=repeats,
        help="measurements per variant; the median is shown (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        metavar="OUT.json",
        help="also write every measurement, the ratios and the machine to this file",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks: speed side by side, shown as ratios",
        description=DESCRIPTION,
        formatter_class=formatter(),
    )
    benches = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    train = benches.add_parser(
        "train",
        help="training images/s: engine vs bare step vs DataLoader",
        description=TRAIN_DESCRIPTION,
        formatter_class=formatter(),
    )
    train.add_argument(
        "--models",
        type=_model_list,
        default=("cnn-dropout", "convnet"),
        metavar="A,B|all",
        help=f"variants to measure (default: cnn-dropout,convnet); choices: {', '.join(list_models())}",
    )
    add_data_option(train)
    train.add_argument(
        "--batch-size", type=positive_int, default=128, help="images per step (default: %(default)s)"
    )
    train.add_argument(
        "--steps", type=positive_int, default=50, help="timed steps per measurement (default: %(default)s)"
    )
    train.add_argument(
        "--warmup",
        type=int,
        default=5,
        metavar="STEPS",
        help="untimed steps before each measurement (default: %(default)s)",
    )
    train.add_argument(
        "--window",
        type=positive_int,
        default=25,
        metavar="STEPS",
        help="the pipelines take turns every this many timed steps, so a slow spell of the machine slows them "
        "all alike (default: %(default)s; --window equal to --steps runs each pipeline's steps in one go)",
    )
    train.add_argument(
        "--precision",
        type=_precision_list,
        default=None,
        metavar="P,Q",
        help=f"precisions to compare, from {', '.join(_PRECISIONS)} (default: no,auto: fp32 and what auto picks on "
        "this machine, when that differs; bf16 on a CPU without native bf16 is emulated and several times slower)",
    )
    train.add_argument(
        "--loader-workers",
        type=_worker_counts,
        default=(0,),
        metavar="N,M",
        help="DataLoader num_workers values to measure (default: 0, as on a laptop; try 0,2)",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's, one per core)",
    )
    train.add_argument(
        "--keras",
        default=None,
        metavar="PYTHON",
        help="also train the notebook's own Keras model (cnn, cnn-dropout) with this Python interpreter, "
        "which must have Keras 3, and print engine/Keras (e.g. a venv with tensorflow-cpu: venv/bin/python)",
    )
    _common(train, repeats=3)
    train.set_defaults(func=run_train)

    infer = benches.add_parser(
        "infer",
        help="inference images/s: onnxruntime vs PyTorch; fashiondist infer vs a pandas script",
        description=INFER_DESCRIPTION,
        formatter_class=formatter(),
    )
    infer.add_argument(
        "--model", required=True, metavar="X.onnx", help="a model written by `fashiondist export`"
    )
    infer.add_argument(
        "--csv",
        required=True,
        metavar="testX.csv",
        help="the images to predict (a competition CSV; .gz works)",
    )
    infer.add_argument(
        "--int8", metavar="Y.onnx", help="the int8 model (`fashiondist export --quantize int8`) to add"
    )
    infer.add_argument(
        "--checkpoint",
        metavar="RUN_DIR|MODEL_DIR",
        help="the checkpoint the ONNX came from, for PyTorch eager (default: found beside the ONNX)",
    )
    infer.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default=(1, 64, 256, 1024),
        metavar="N,M",
        help="batch sizes to measure (default: 1,64,256,1024)",
    )
    infer.add_argument(
        "--min-seconds",
        type=float,
        default=0.3,
        help="timed seconds per measurement, about (default: %(default)s)",
    )
    infer.add_argument(
        "--end-to-end",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="race `fashiondist infer` against the pandas + PyTorch and pandas + onnxruntime scripts (default: on)",
    )
    infer.add_argument(
        "--provider",
        choices=PROVIDER_CHOICES,
        default="auto",
        help="onnxruntime execution provider (default: %(default)s)",
    )
    infer.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for onnxruntime and PyTorch alike (default: each library's, one per core)",
    )
    _common(infer, repeats=3)
    infer.set_defaults(func=run_infer)

    tta = benches.add_parser(
        "time-to-accuracy",
        help="wall seconds of `fashiondist train` to each validation accuracy",
        description=ACCURACY_DESCRIPTION,
        formatter_class=formatter(),
    )
    tta.add_argument(
        "--recipe",
        required=True,
        metavar="FILE.yaml|MODEL",
        help=f"an experiment YAML or a model: {', '.join(list_models())}",
    )
    add_data_option(tta, default=None)
    tta.add_argument(
        "--targets",
        type=_targets,
        default=(0.90, 0.91, 0.92, 0.93),
        metavar="A,B",
        help="validation accuracies (default: 0.90,0.91,0.92,0.93)",
    )
    tta.add_argument("--epochs", type=positive_int, default=None, help="passed to fashiondist train")
    tta.add_argument("--batch-size", type=positive_int, default=None, help="passed to fashiondist train")
    tta.add_argument("--precision", choices=_PRECISIONS, default=None, help="passed to fashiondist train")
    tta.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="passed to fashiondist train"
    )
    tta.add_argument(
        "--out", metavar="DIR", help="keep the run directories here (default: a temporary directory, removed)"
    )
    _common(tta, repeats=1)
    tta.set_defaults(func=run_time_to_accuracy)


def _measure(
    run: Callable[..., dict],
    bench: Any,
    json_path: Path | None,
    tables: Callable[[dict, str], list],
    **machine_kw,
) -> int:
    """Describe the machine, run `bench` while watching the CPU's other users, print the tables, write --json."""
    from fashiondist.bench.machine import CpuShare, describe_machine, machine_line
    from fashiondist.bench.report import write_bench_json
    from fashiondist.consoles import results_console

    machine = describe_machine(**machine_kw)
    with CpuShare() as share:
        result = run(bench, _log())
    machine["cpu_share"] = share.result()
    payload = {"machine": machine, **result}
    out = results_console()
    caption = machine_line(machine, result["settings"].get("torch_threads"))
    for table in tables(payload, caption):
        out.print(table)
    if json_path is not None:
        write_bench_json(json_path, payload)
        out.print(f"wrote {json_path}")
    return 0


def _log():
    from fashiondist.consoles import log_console

    console = log_console()
    return lambda message: console.print(message, highlight=False)


def _resolve_precisions(requested: tuple[str, ...]) -> tuple[str, ...]:
    """`auto` -> what it picks on this machine (said on stderr, with the reason); duplicates dropped."""
    from fashiondist.hardware import this_machine_precision

    resolved = []
    for name in requested:
        choice = this_machine_precision(name)
        if name == "auto":
            _log()(f"precision auto: {choice.precision} ({choice.reason})")
        resolved.append(choice.precision)
    return tuple(dict.fromkeys(resolved))


def run_train(args: argparse.Namespace) -> int:
    from fashiondist.bench.report import check_json_target
    from fashiondist.bench.train import TrainBench, run_train_bench, train_tables

    json_path = check_json_target(args.json)
    precisions = _resolve_precisions(args.precision or ("no", "auto"))
    bench = TrainBench(
        models=tuple(args.models), data=args.data, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
        window=args.window, precisions=tuple(precisions), repeats=args.repeats, loader_workers=tuple(args.loader_workers), seed=args.seed, threads=args.threads, keras=args.keras,
    )  # fmt: skip
    return _measure(run_train_bench, bench, json_path, train_tables)


def run_infer(args: argparse.Namespace) -> int:
    from fashiondist.bench.infer import InferBench, infer_tables, run_infer_bench
    from fashiondist.bench.report import check_json_target

    json_path = check_json_target(args.json)
    bench = InferBench(
        model=Path(args.model), csv=Path(args.csv), int8=Path(args.int8) if args.int8 else None,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None, batch_sizes=tuple(args.batch_sizes),
        repeats=args.repeats, min_seconds=args.min_seconds, end_to_end=args.end_to_end, provider=args.provider,
        threads=args.threads,
    )  # fmt: skip
    return _measure(run_infer_bench, bench, json_path, infer_tables)


def run_time_to_accuracy(args: argparse.Namespace) -> int:
    from fashiondist.bench.accuracy import AccuracyBench, accuracy_tables, run_accuracy_bench
    from fashiondist.bench.report import check_json_target
    from fashiondist.output_paths import check_output_dir

    json_path = check_json_target(args.json)
    bench = AccuracyBench(
        recipe=args.recipe, targets=tuple(args.targets), data=args.data, epochs=args.epochs,
        batch_size=args.batch_size, precision=args.precision, overrides=tuple(args.set), repeats=args.repeats,
        out=check_output_dir(args.out, "--out") if args.out else None,
    )  # fmt: skip
    return _measure(run_accuracy_bench, bench, json_path, accuracy_tables, torch_threads=False)
