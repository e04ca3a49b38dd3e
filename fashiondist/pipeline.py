"""The main job, stage after stage: train every variant -> evaluate and select -> export the best -> submit
-> report.

    job = run_main_job(configs, Path("runs/sweep"), test_csv="testX.csv", quantize="int8", results=results_console())
    fashiondist train --models all --test testX.csv                         # the same, from the command line

Every process of a launched group trains (DDP); evaluation, export and submission run on the main process
only, after the others are done with their training. `report.html` is written once, at the end, with what
was shipped in it. The leaderboard goes to `results` (stdout); progress and logs go to stderr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from fashiondist.config import TrainConfig, Tta
from fashiondist.consoles import log_console, results_console
from fashiondist.evaluation.plots import COMPARISON_FILE
from fashiondist.run_layout import MODEL_FILE

SUBMISSION_FILE = "submission.csv"


@dataclass
class Shipment:
    """What a multi-model run shipped: the best variant, its export, and the report's summary of both."""

    best: Any  # evaluation.scores.VariantResult
    export: Any  # export.exporter.ExportReport
    summary: dict[str, str] = field(default_factory=dict)  # label -> text, in the report and on stdout
    variants: list = field(default_factory=list)  # evaluation.scores.VariantResult, every variant
    report: Path | None = None  # report.html


@dataclass
class MainJob:
    runs: list  # engine.trainer.RunResult, one per variant trained
    main_process: bool
    preempted: bool
    shipment: Shipment | None = None  # multi-model runs, on the main process


def run_main_job(
    configs: list[TrainConfig],
    parent: Path | None,
    test_csv: str | None = None,
    quantize: str | None = None,
    results: Console | None = None,
) -> MainJob:
    """Train `configs` one after the other; with a `parent` (a multi-model run, or one variant's own run
    directory under `--model X --test T`) ship the best of them."""
    from fashiondist.engine.run_record import failure_recorded

    log = log_console()
    runs, main_process = train_all(configs, parent, log)
    preempted = bool(runs and runs[-1].preempted_by)
    job = MainJob(runs, main_process, preempted)
    if parent is not None and main_process and not preempted:
        with failure_recorded(_parent_record(parent, configs), main_process):
            job.shipment = ship(
                runs, parent, configs[0].data, test_csv, quantize, results or results_console(), log
            )
    if _parent_record(parent, configs) is not None and main_process:
        _finish_record(parent, job)
    if job.shipment is not None:  # last, so that the report shows the run's finished record
        job.shipment.report = write_report(parent, job.shipment)
    return job


def write_report(parent: Path, shipment: Shipment) -> Path:
    """parent/report.html: every variant, the export and the submission, and how the run was made."""
    from fashiondist.evaluation.html import write_html_report

    return write_html_report(
        parent,
        shipment.variants,
        shipment.best,
        extra=shipment.summary,
        comparison_plot=parent / COMPARISON_FILE,
    )


def _parent_record(parent: Path | None, configs: list[TrainConfig]) -> Path | None:
    """The directory whose run.json describes a multi-model run as a whole; None where there is none: no
    parent, or one variant shipping from its own run directory (`--model X --test T`), whose record is its own."""
    if parent is None or any(Path(parent) == cfg.run_dir() for cfg in configs):
        return None
    return parent


def _begin_record(parent: Path, configs: list[TrainConfig], accelerator, data) -> None:
    """parent/run.json: the multi-model run as a whole (each variant's directory has its own)."""
    from fashiondist.data.digest import data_record
    from fashiondist.engine import run_record
    from fashiondist.engine.trainer import run_precision

    parent.mkdir(parents=True, exist_ok=True)
    variants = {cfg.run_dir().name: cfg.to_dict() for cfg in configs}  # the model's name, or fold-i
    choice = run_precision(accelerator, configs[0].precision)
    resumed = any(cfg.resume for cfg in configs)
    run_record.begin(parent, None, accelerator, data_record(data), choice, variants=variants, resumed=resumed)


def _finish_record(parent: Path, job: MainJob) -> None:
    from fashiondist.engine import run_record

    result = {r.model: {"best_val_acc": r.best_val_acc, "best_epoch": r.best_epoch} for r in job.runs}
    if job.shipment is not None:
        result = {"best": job.shipment.best.name, "variants": result, **job.shipment.summary}
    run_record.finish(parent, "preempted" if job.preempted else "finished", result)


def train_all(configs: list[TrainConfig], parent: Path | None, log: Console) -> tuple[list, bool]:
    """(one RunResult per variant, whether this is the main process); stops after a preempted variant."""
    from fashiondist.data.sources import load_data
    from fashiondist.engine.launch_guard import (
        agree_on_config,
        elastic_resume,
        orphan_guard,
        peer_loss_as_one_line,
    )
    from fashiondist.engine.progress import TrainProgress
    from fashiondist.engine.run_lock import main_process_lock
    from fashiondist.engine.trainer import make_accelerator

    orphan_guard()
    configs = elastic_resume(configs, lambda message: log.print(message, highlight=False))
    accelerator = make_accelerator(configs[0], project_dir=parent or configs[0].run_dir())
    agree_on_config(accelerator, configs)
    progress = TrainProgress(enabled=accelerator.is_main_process, quiet=configs[0].quiet, console=log)
    # one run at a time per directory: a multi-model run holds its parent, which holds every variant's
    lock = main_process_lock(accelerator, parent or configs[0].run_dir(), progress.log)
    with lock:
        data = load_data(configs[0].data)
        record_dir = _parent_record(parent, configs)
        if record_dir is not None and accelerator.is_main_process:
            _begin_record(record_dir, configs, accelerator, data)
        with peer_loss_as_one_line():
            return _train_each(configs, record_dir, accelerator, progress, data)


def _train_each(
    configs: list[TrainConfig], record_dir: Path | None, accelerator, progress, data
) -> tuple[list, bool]:
    from fashiondist.engine.run_record import failure_recorded
    from fashiondist.engine.tracker_run import start_tracker
    from fashiondist.engine.trainer import Trainer

    runs = []
    with progress, failure_recorded(record_dir, accelerator.is_main_process):
        for cfg in configs:
            with failure_recorded(cfg.run_dir(), accelerator.is_main_process):
                trainer = Trainer(cfg, accelerator, data, progress)
                if cfg.log_with:  # after the Trainer read last/: a resumed run continues its tracker run
                    start_tracker(accelerator, cfg, trainer.state)
                run = trainer.run()
            if cfg.log_with:
                accelerator.end_training()
            accelerator.free_memory()
            if cfg.private_test and not run.preempted_by and accelerator.is_main_process and not cfg.folds:
                from fashiondist.engine.private_test import score_private_test

                score_private_test(cfg.run_dir(), cfg, data.images, data.labels)
            runs.append(run)
            if run.preempted_by:
                break
    return runs, accelerator.is_main_process


def ship(
    runs: list,
    parent: Path,
    data_spec: str,
    test_csv: str | None,
    quantize: str | None,
    results: Console,
    log: Console,
) -> Shipment:
    """Report every variant, export the best to parent/model.onnx, and with `test_csv` write the submission
    (report.html is written after, by `write_report`, once the run's record is complete).

    With `quantize`, the int8 model is exported too and, when its accuracy holds, writes the submission
    (faster on the CPU); when it is refused, the float model does and the report says why.
    """
    from fashiondist.evaluation.sweep import evaluate_sweep
    from fashiondist.export.check_images import load_check_images
    from fashiondist.export.exporter import export_checkpoint

    variants, best = evaluate_sweep(parent, [r.run_dir for r in runs], results)
    checks = load_check_images(data_spec, best.run_dir)
    model_path = parent / MODEL_FILE
    export = export_checkpoint(
        best.run_dir, model_path, images=checks.images, labels=checks.labels,
        tta=Tta(best.summary.get("tta") or Tta.NONE.value), calibration_images=checks.calibration_images,
        quantize=quantize, log=lambda message: log.print(message, highlight=False),
    )  # fmt: skip
    shipment = Shipment(best, export, variants=variants)
    shipment.summary = {
        "best model": best.name,
        "ONNX model": str(model_path),
        "parity max |prob diff|": f"{export.max_abs_diff:.2e}",
    }
    serving = _serving_model(export, model_path, shipment.summary)
    if test_csv is not None:
        from fashiondist.inference.job import infer_csv

        submission = infer_csv(serving, test_csv, parent / SUBMISSION_FILE)
        shipment.summary["submission"] = f"{submission.out} ({submission.rows:,} rows, {serving.name})"
    return shipment


def _serving_model(export, model_path: Path, summary: dict[str, str]) -> Path:
    """The int8 model when the accuracy gate kept it and the CPU has VNNI/AMX, else the float one; the summary
    says which and why."""
    if export.int8 is None:
        return model_path
    if export.int8_refusal is not None:
        summary["int8 model"] = export.int8_refusal
        return model_path
    int8 = export.int8
    from fashiondist.inference.choice import int8_flags

    if not int8_flags():  # the same rule as `infer RUN_DIR` (fashiondist.inference.choice)
        summary["int8 model"] = (
            f"{int8.path} accepted, not used: this CPU has no int8 dot products (VNNI, AMX)"
        )
        return model_path
    summary["int8 model"] = (
        f"{int8.path} (validation accuracy {int8.int8_accuracy:.2%} vs {int8.fp32_accuracy:.2%} fp32)"
    )
    return Path(int8.path)


def run_folds(cfg: TrainConfig, results: Console | None = None) -> MainJob:
    """K-fold cross-validation (`engine.folds`): train the unfinished folds into RUN/fold-i, then write RUN's
    out-of-fold predictions and summary and report them (the leaderboard's CV column, the OOF confusion
    matrix and per-class table, report.html)."""
    from accelerate import PartialState

    from fashiondist.data.sources import load_data
    from fashiondist.engine import run_record
    from fashiondist.engine.folds import finished, fold_configs, write_cv
    from fashiondist.evaluation.sweep import report_run

    parent = cfg.run_dir()
    todo = [c for c in fold_configs(cfg) if not finished(c)]
    if todo:
        runs, main_process = train_all(todo, parent, log_console())
    else:
        runs, main_process = [], PartialState().is_main_process
    job = MainJob(runs, main_process, bool(runs and runs[-1].preempted_by))
    if main_process and not job.preempted:
        with run_record.failure_recorded(parent if todo else None, main_process):
            data = load_data(cfg.data)
            cv = write_cv(parent, cfg, data.labels)
            if cfg.private_test:
                from fashiondist.engine.private_test import score_private_test

                cv["private_test"] = score_private_test(parent, cfg, data.images, data.labels)["accuracy"]
        if todo:  # before the report, which shows the finished record
            run_record.finish(parent, "finished", {"cv": cv})
        report_run(parent, results or results_console())
    elif main_process and todo:
        run_record.finish(parent, "preempted", None)
    return job
