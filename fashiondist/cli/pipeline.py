"""The main job, stage after stage: train each variant -> evaluate and select -> export the best -> infer.

Every process of a launched group trains (DDP); the report, export and inference run on the main process
only, after the others are done with their training.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from fashiondist.cli._common import stdout_console
from fashiondist.config import TrainConfig


def run_pipeline(
    configs: list[TrainConfig], parent: Path | None, test_csv: str | None = None, quantize: str | None = None
) -> int:
    from fashiondist.data.sources import load_data
    from fashiondist.engine.progress import TrainProgress
    from fashiondist.engine.trainer import Trainer, make_accelerator

    accelerator = make_accelerator(configs[0], project_dir=parent or configs[0].run_dir())
    console = Console(stderr=True)
    progress = TrainProgress(enabled=accelerator.is_main_process, quiet=configs[0].quiet, console=console)
    data = load_data(configs[0].data)
    results = []
    with progress:
        for cfg in configs:
            if cfg.log_with:
                accelerator.init_trackers(cfg.model, config=cfg.to_dict())
            result = Trainer(cfg, accelerator, data, progress).run()
            if cfg.log_with:
                accelerator.end_training()
            accelerator.free_memory()
            results.append(result)
            if result.preempted_by:
                return 0
    if not accelerator.is_main_process:
        return 0
    out = stdout_console()
    if parent is None:
        r = results[0]
        out.print(
            f"{r.model}: best validation accuracy {r.best_val_acc:.4f} at epoch {r.best_epoch}/{r.epochs_done}, "
            f"{r.images_per_s:,.0f} images/s, {r.train_seconds:.1f} s of training -> {r.run_dir}"
        )
        return 0
    return _select_and_ship(results, parent, configs[0].data, test_csv, quantize, out, console)


def _select_and_ship(
    results, parent: Path, data_spec: str, test_csv: str | None, quantize: str | None, out: Console, log: Console
) -> int:
    """Report every variant, export the best to parent/model.onnx, and with `test_csv` write the submission.

    With `quantize`, the int8 model is exported too and, when its accuracy holds, writes the submission
    (faster on the CPU); when it is refused, the float model does and the report says why.
    """
    from fashiondist.config import Tta
    from fashiondist.evaluation.html import write_report
    from fashiondist.evaluation.plots import COMPARISON_FILE
    from fashiondist.evaluation.sweep import report_sweep
    from fashiondist.export.exporter import export_checkpoint, load_check_images, report_table

    variants, best = report_sweep(parent, [r.run_dir for r in results], out)
    checks = load_check_images(data_spec, best.run_dir)
    model_path = parent / "model.onnx"
    tta = Tta(best.summary.get("tta") or Tta.NONE.value)
    export = export_checkpoint(
        best.run_dir, model_path, images=checks.images, labels=checks.labels, tta=tta,
        calibration_images=checks.calibration_images, quantize=quantize,
        log=lambda message: log.print(message, highlight=False),
    )  # fmt: skip
    out.print(report_table(export))
    shipped = {"best model": best.name, "ONNX model": str(model_path), "parity max |prob diff|": f"{export.max_abs_diff:.2e}"}
    serving = model_path
    if export.int8 is not None:
        if export.int8_refusal is None:
            serving = Path(export.int8.path)
            shipped["int8 model"] = (
                f"{serving} (validation accuracy {export.int8.int8_accuracy:.2%} vs {export.int8.fp32_accuracy:.2%} fp32)"
            )
        else:
            shipped["int8 model"] = export.int8_refusal
    if test_csv is not None:
        from fashiondist.inference.run import infer_csv

        submission = infer_csv(serving, test_csv, parent / "submission.csv")
        shipped["submission"] = f"{submission.out} ({submission.rows:,} rows, {serving.name})"
    write_report(parent, variants, best, extra=shipped, comparison_plot=parent / COMPARISON_FILE)
    out.print(f"best: {best.name} (validation accuracy {best.accuracy:.2%}) -> {parent / 'best.json'}")
    for key, value in shipped.items():
        out.print(f"{key}: {value}", highlight=False)
    out.print(f"leaderboard: {parent / 'leaderboard.md'}\nreport: {parent / 'report.html'}", highlight=False)
    return 0
