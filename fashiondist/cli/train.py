"""`fashiondist train`: train one variant, or several one after another, then select, report and export."""

from __future__ import annotations

import argparse
from pathlib import Path

from fashiondist.cli._common import add_data_option, formatter
from fashiondist.config import Optimizer, Precision, Schedule, Tta
from fashiondist.consoles import results_console
from fashiondist.models.registry import list_models

EXAMPLES = """\
examples:
  fashiondist train                                  # the default model (convnet) on the bundled sample
  fashiondist train --model cnn-dropout --epochs 5   # precision auto: bf16 where the hardware has it
  fashiondist train --models all --config launch/experiments/demo.yaml --test testX.csv
  fashiondist train --models convnet,cnn-dropout --test testX.csv --quantize int8   # submit with the int8 model
  fashiondist train --model convnet --test testX.csv   # one variant: runs/convnet gets model.onnx, submission.csv
  fashiondist train --model convnet --data ../data/fashion-mnist --set model_kwargs.width=1.5
  fashiondist train --model convnet --resume auto    # continue runs/convnet/last if it is there

  accelerate launch --multi_gpu --num_processes 4 -m fashiondist train --model resnet9
  ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m fashiondist train --model cnn
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
      -m fashiondist train --config launch/experiments/fashion-mnist-best.yaml

precedence: defaults < the model's recipe (`fashiondist models`) < --config YAML < its per_model entry
< command-line flags. The global batch (--batch-size) stays the same whatever the number of processes:
per-device batch = batch size / (grad accum x processes).
SIGTERM or SIGUSR1 saves OUT/last at the next step and exits 0; rerun with --resume auto to continue.
"""

# CLI flag -> TrainConfig key, for the flags that map one to one.
_FLAG_KEYS = (
    "data", "epochs", "batch_size", "grad_accum", "precision", "lr", "optimizer", "schedule", "label_smoothing",
    "ema", "augment", "seed", "val_fraction", "out", "resume", "log_with", "quiet", "tta", "early_stop",
    "compile", "mixup", "cutmix", "folds", "private_test", "teacher", "sync_bn", "split_seed", "init", "sam",
)  # fmt: skip


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one or more model variants (DDP-ready under accelerate launch / torchrun)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=formatter(),
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", choices=list_models(), help="the variant to train (default: convnet)")
    which.add_argument(
        "--models",
        metavar="A,B,...|all",
        help=f"train several variants one after another, pick the best on validation, report and export; "
        f"choices: {', '.join(list_models())}, or all",
    )
    add_data_option(p, default=None)
    p.add_argument("--epochs", type=int, help="passes over the training split")
    p.add_argument("--batch-size", type=int, help="GLOBAL batch size (all processes and accumulation steps)")
    p.add_argument("--grad-accum", type=int, help="micro-batches accumulated per optimizer step")
    p.add_argument(
        "--precision",
        choices=[m.value for m in Precision],
        help="mixed precision; auto (default): a mixed precision the accelerate config sets, else bf16 on GPUs that "
        "have it (fp16 on older ones), bf16 on CPUs with native bf16 (avx512_bf16, amx_bf16), else no (fp32); "
        "`fashiondist doctor` says what auto picks here and why",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model for training (accelerate's dynamo plugin, inductor; needs a C compiler on "
        "the CPU); checkpoints and exports are the plain module's",
    )
    p.add_argument(
        "--sync-bn",
        action="store_true",
        default=None,
        help="under DDP, BatchNorm statistics over the global batch (SyncBatchNorm) instead of each process's "
        "share: for small per-device batches; saved and exported as plain BatchNorm",
    )
    p.add_argument("--lr", type=float, help="peak learning rate at the given global batch size")
    p.add_argument("--optimizer", choices=[m.value for m in Optimizer])
    p.add_argument("--schedule", choices=[m.value for m in Schedule], help="learning-rate shape after warmup")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument(
        "--ema", type=float, metavar="DECAY", help="evaluate and save an EMA of the weights (e.g. 0.999)"
    )
    p.add_argument(
        "--sam",
        type=float,
        metavar="RHO",
        help="sharpness-aware minimisation with radius RHO (e.g. 0.05): each gradient taken at the worst weights "
        "within RHO, about 2x a step; --set sam_start=0.5 keeps it to the run's second half; 0: off",
    )
    p.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=None, help="random flip + translation"
    )
    p.add_argument(
        "--mixup", type=float, metavar="ALPHA", help="mixup with lam ~ Beta(ALPHA, ALPHA), e.g. 0.2; 0: off"
    )
    p.add_argument(
        "--cutmix", type=float, metavar="ALPHA", help="cutmix with lam ~ Beta(ALPHA, ALPHA), e.g. 1.0; 0: off"
    )
    p.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="stratified K-fold cross-validation: one model per fold, OUT/fold-i",
    )
    p.add_argument(
        "--private-test", type=int, metavar="N", help="hold N images out of everything; scored at the end"
    )
    p.add_argument(
        "--teacher",
        metavar="RUN[,RUN...]",
        help="distil these runs' averaged probabilities (a folds run: its folds)",
    )
    p.add_argument(
        "--init",
        metavar="RUN",
        help="start from this run's best weights (same model and kwargs) instead of random ones: fine-tuning",
    )
    p.add_argument("--tta", choices=[m.value for m in Tta], help="test-time augmentation at evaluation")
    p.add_argument(
        "--early-stop", type=int, metavar="EPOCHS", help="stop after this many epochs without improvement"
    )
    p.add_argument("--seed", type=int, help="seeds the split, initial weights, augmentation and dropout")
    p.add_argument(
        "--split-seed",
        type=int,
        metavar="SEED",
        help="seed of the validation split and folds only (default: --seed); ensemble members trained with "
        "different --seed and one --split-seed share a validation split none of them trained on",
    )
    p.add_argument("--val-fraction", type=float, help="share of labelled images held out for validation")
    p.add_argument(
        "--out",
        help="run directory (one model; default runs/{model}, where {model} is the variant's name, the only "
        "placeholder; write a literal brace twice) or parent directory (--models; default runs/sweep)",
    )
    p.add_argument(
        "--resume", metavar="PATH|auto", help="continue from a last/ checkpoint; auto: OUT/last when present"
    )
    p.add_argument(
        "--config", metavar="FILE.yaml", help="hyperparameters from a YAML file (see launch/experiments/)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config key, e.g. --set model_kwargs.width=2",
    )
    p.add_argument("--log-with", help="an accelerate tracker (tensorboard, wandb, mlflow, ...)")
    p.add_argument(
        "--quiet",
        action="store_true",
        default=None,
        help="no progress bar; one line per epoch (for log files)",
    )
    p.add_argument(
        "--test",
        metavar="CSV",
        help="export the best model (--models) or the one model (--model: into its run directory) and write "
        "OUT/submission.csv for this testX.csv with it",
    )
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="with --models or --test: also export OUT/model.int8.onnx (kept if within 0.5 points of fp32) and infer --test with it",
    )
    p.set_defaults(func=run)


def _model_names(args: argparse.Namespace) -> tuple[list[str], bool]:
    """The variants to train, and whether this is a multi-model run."""
    from fashiondist.config import sweep_models
    from fashiondist.errors import InputError

    if args.models:
        names = (
            list_models()
            if args.models.strip() == "all"
            else [m.strip() for m in args.models.split(",") if m.strip()]
        )
    elif args.model:
        return [args.model], False
    else:
        names = sweep_models(args.config)
        if not names:
            return [None], False
    unknown = [n for n in names if n not in list_models()]
    if unknown or not names:
        raise InputError(
            f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}",
            hint=f"choose from {', '.join(list_models())} or all",
        )
    return list(dict.fromkeys(names)), True


def run(args: argparse.Namespace) -> int:
    from fashiondist.config import parse_set_options, resolve_config
    from fashiondist.errors import InputError
    from fashiondist.models.registry import model_recipe

    names, multi = _model_names(args)
    if args.quantize and not (multi or args.test):
        raise InputError(
            "--quantize needs --models or --test (for one run alone, use `fashiondist export RUN --quantize int8`)"
        )
    if args.test and not Path(args.test).is_file():
        raise InputError(f"--test {args.test}: no such file (checked before training, not after it)")
    flags = {key: getattr(args, key) for key in _FLAG_KEYS}
    flags.update(parse_set_options(args.set))
    parent = None
    if multi:
        parent = Path(flags.pop("out") or "runs/sweep")
    configs = []
    for name in names:
        cfg = resolve_config(name, args.config, flags, recipe_for=model_recipe)
        if parent is not None:
            cfg.out = str(parent / cfg.model)
        configs.append(cfg)
    if args.test and not multi:
        parent = configs[0].run_dir()  # one variant ships from its own run directory
    _check_sweep_wide(configs)
    _check_outputs(configs, parent)
    if args.test:  # the submission is written over OUT/submission.csv: never the --test CSV itself
        from fashiondist.output_paths import check_not_an_input
        from fashiondist.pipeline import SUBMISSION_FILE

        check_not_an_input(parent / SUBMISSION_FILE, "--out", inputs={"the --test CSV": args.test})
    from fashiondist.models.registry import check_model_kwargs

    for cfg in configs:  # each variant's model_kwargs, before any data is loaded
        check_model_kwargs(cfg.model, cfg.model_kwargs)
    from fashiondist.pipeline import run_folds, run_main_job

    out = results_console()
    if configs[0].folds >= 2:
        _check_folds(configs, multi, args)
        job = run_folds(configs[0], out)
        if job.main_process and not job.preempted:
            out.print(f"cross-validation: {configs[0].run_dir()}", highlight=False)
            _print_private_test(out, configs[0].run_dir())
        return 0
    job = run_main_job(configs, parent, test_csv=args.test, quantize=args.quantize, results=out)
    if not job.main_process or job.preempted:
        return 0
    if job.shipment is None:
        r = job.runs[0]
        out.print(
            f"{r.model}: best validation accuracy {r.best_val_acc:.4f} at epoch {r.best_epoch}/{r.epochs_done}, "
            f"{r.images_per_s:,.0f} images/s, {r.train_seconds:.1f} s of training -> {r.run_dir}"
        )
        _print_private_test(out, r.run_dir)
        return 0
    _print_shipment(out, job.shipment, parent)
    return 0


def _print_shipment(out, shipment, parent: Path) -> None:
    from fashiondist.cli.export import export_table

    out.print(export_table(shipment.export))
    best = shipment.best
    out.print(f"best: {best.name} (validation accuracy {best.accuracy:.2%}) -> {parent / 'best.json'}")
    for key, value in shipment.summary.items():
        out.print(f"{key}: {value}", highlight=False)
    out.print(f"leaderboard: {parent / 'leaderboard.md'}\nreport: {shipment.report}", highlight=False)


def _print_private_test(out, run_dir: Path) -> None:
    import json

    from fashiondist.run_layout import PRIVATE_TEST_FILE

    path = run_dir / PRIVATE_TEST_FILE
    if path.is_file():
        score = json.loads(path.read_text())
        out.print(
            f"private test split: {score['accuracy']:.2%} ± {score['standard_error']:.2%} on "
            f"{score['images']:,} images ({score['how']}) -> {path}",
            highlight=False,
        )


def _check_folds(configs, multi: bool, args) -> None:
    from fashiondist.errors import InputError

    if multi or args.test or args.quantize:
        raise InputError(
            "--folds trains one model per fold: use it with one --model, without --test/--quantize",
            hint="then `fashiondist export RUN --out model.onnx` exports the folds as one ensemble",
        )


def _check_sweep_wide(configs) -> None:
    """Settings fixed for a process's life (its Accelerator) must agree across the variants of one run."""
    from fashiondist.errors import InputError

    for key in ("precision", "log_with", "data", "compile"):
        values = {str(getattr(c, key)) for c in configs}
        if len(values) > 1:
            raise InputError(
                f"{key} must be the same for every variant of one run, got {', '.join(sorted(values))}"
            )


def _check_outputs(configs, parent: Path | None) -> None:
    """Every run directory (and a multi-model run's parent) can be written, checked before any training."""
    from fashiondist.output_paths import check_output_dir

    if parent is not None:
        check_output_dir(parent, "--out")
    for cfg in configs:
        check_output_dir(cfg.run_dir(), "--out")
