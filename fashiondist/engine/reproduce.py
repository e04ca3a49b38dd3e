"""Rerun a recorded run and compare it, epoch by epoch, with what it recorded.

    rep = reproduce_run(Path("runs/cnn"), epochs=2)       # into runs/cnn-reproduce
    rep.identical, rep.verdict, rep.exit_code
    fashiondist reproduce runs/cnn --epochs 2               # the same, from the command line

The rerun uses the run's config.yaml (precision as it was asked, e.g. auto), its data (refused when the
data's sha256 differs from the one in run.json), and stops after the first N epochs (the learning-rate
schedule still spans the recorded epochs, so the first N epochs are the recorded ones). Its own run.json
names its environment; the verdict lists what differs from the recorded one.

On the CPU a run is deterministic: the same machine kind, software, thread count and precision give bitwise
the same metrics (on GPUs, cuDNN and atomic adds may not: GPU_NOISE). Anything else (another CPU kind or ATen kernels, another torch, another thread count,
another precision, GPUs) changes the order of floating-point sums; the first epochs then differ by at most
TOLERANCE, which is the spread seen between such environments on the sample over a few epochs, well
inside the run-to-run spread of seeds. Step, val_count and lr are exact everywhere.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashiondist import run_layout
from fashiondist.config import TrainConfig, apply_overrides, load_saved_config
from fashiondist.data.digest import data_digest
from fashiondist.data.sources import load_data
from fashiondist.engine.progress import TrainProgress
from fashiondist.engine.run_record import environment_differences, failure_recorded, read_run_record
from fashiondist.engine.trainer import Trainer, make_accelerator
from fashiondist.errors import InputError
from fashiondist.output_paths import check_not_an_input, check_output_dir
from fashiondist.run_layout import CONFIG_FILE, METRICS_FILE

# metric -> largest |difference| expected in another environment (accuracy as a fraction, loss in nats)
TOLERANCE = {
    "step": 0.0,
    "val_count": 0.0,
    "lr": 0.0,
    "train_loss": 0.1,
    "train_acc": 0.03,
    "val_loss": 0.1,
    "val_acc": 0.03,
}
# Why two runs on the same GPU kind may differ: what the verdict says when nothing else differs.
GPU_NOISE = (
    "CUDA kernels: cuDNN's algorithm choice and atomic adds are not bitwise repeatable from run to run "
    "(torch.use_deterministic_algorithms is not forced: it is slower)"
)
# config keys that say where and how a run is shown, not what it computes
_PLACE_KEYS = ("out", "resume", "data", "quiet", "log_with")


@dataclass
class MetricDiff:
    metric: str
    max_abs_diff: float
    epoch: int | None  # the (first) epoch of the largest difference; None when identical

    @property
    def within_tolerance(self) -> bool:
        return self.max_abs_diff <= TOLERANCE[self.metric]


@dataclass
class Reproduction:
    run_dir: Path
    out_dir: Path
    epochs: int
    diffs: list[MetricDiff]
    causes: list[str] = field(default_factory=list)  # what differs: environment, precision, config
    verdict: str = ""

    @property
    def identical(self) -> bool:
        return all(d.max_abs_diff == 0 for d in self.diffs)

    @property
    def exit_code(self) -> int:
        """0: bitwise identical, or different within TOLERANCE where the environment explains it; else 1."""
        if self.identical:
            return 0
        return 0 if self.causes and all(d.within_tolerance for d in self.diffs) else 1


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records (read by `run_layout.read_metrics`), which must be epochs 1 to N to rerun."""
    records = run_layout.read_metrics(run_dir)
    epochs = [record["epoch"] for record in records]
    if epochs != list(range(1, len(records) + 1)):
        raise InputError(f"{Path(run_dir) / METRICS_FILE}: records epochs {epochs}, not 1 to {len(records)}")
    return records


def compare_metrics(recorded: list[dict[str, Any]], rerun: list[dict[str, Any]]) -> list[MetricDiff]:
    """Per metric of TOLERANCE, the largest |recorded - rerun| over the epochs both have."""
    diffs = []
    for metric in TOLERANCE:
        worst, where = 0.0, None
        for old, new in zip(recorded, rerun, strict=True):
            diff = abs(float(old[metric]) - float(new[metric]))
            if diff > worst or (where is None and old[metric] != new[metric]):
                worst, where = diff, old["epoch"]
        diffs.append(MetricDiff(metric, worst, where))
    return diffs


def _data_spec(record: dict[str, Any]) -> str:
    data = record["data"]
    if data["path"] is None:
        return data["source"]
    if not Path(data["path"]).exists():
        raise InputError(
            f"the recorded data {data['path']} is gone",
            hint=f"restore it (sha256 {data['sha256']}) to rerun this run",
        )
    return data["path"]


def _rerun_config(run_dir: Path, record: dict[str, Any], out: Path, overrides: dict[str, Any]) -> TrainConfig:
    cfg = load_saved_config(run_dir / CONFIG_FILE)
    cfg = apply_overrides(cfg, overrides, source="--set")
    cfg.data, cfg.out, cfg.resume, cfg.log_with = _data_spec(record), str(out), None, None
    return cfg


def _config_changes(recorded: dict[str, Any], rerun: dict[str, Any]) -> list[str]:
    keys = [k for k in dict.fromkeys([*recorded, *rerun]) if k not in _PLACE_KEYS]
    return [
        f"config {k}: {recorded.get(k)!r} -> {rerun.get(k)!r}"
        for k in keys
        if recorded.get(k) != rerun.get(k)
    ]


def _precision_change(recorded: dict[str, Any], rerun: dict[str, Any]) -> list[str]:
    old, new = recorded["precision"], rerun["precision"]
    if old["resolved"] == new["resolved"]:
        return []
    return [f"precision: {old['resolved']} -> {new['resolved']} ({new['reason']})"]


def _verdict(rep: Reproduction) -> str:
    n = f"{rep.epochs} epoch{'s' if rep.epochs != 1 else ''}"
    causes = "; ".join(rep.causes)
    if rep.identical:
        also = f" (although {causes})" if rep.causes else " (same machine kind, software and settings)"
        return f"bitwise identical over {n}{also}"
    worst = ", ".join(
        f"{d.metric} {d.max_abs_diff:.3g} (epoch {d.epoch})" for d in rep.diffs if d.max_abs_diff
    )
    if not rep.causes:
        return (
            f"NOT reproduced: the numbers differ over {n} ({worst}) on the same machine kind, software and "
            "settings; that is a bug in fashiondist's determinism, please report it"
        )
    tolerance = "within" if rep.exit_code == 0 else "BEYOND"
    return f"differs over {n} ({worst}), {tolerance} the tolerance for another environment; what differs: {causes}"


def reproduce_run(
    run_dir: str | Path,
    epochs: int | None = None,
    out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    quiet: bool = True,
) -> Reproduction:
    """Rerun `run_dir` (its first `epochs` epochs, default all it recorded) into `out` and compare."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir.with_name(f"{run_dir.name}-reproduce")
    check_output_dir(out, "--out")  # a file, a device, a directory nothing can be written in: refused first
    check_not_an_input(out, "--out", run_dirs=[run_dir])
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out}: not empty; the rerun needs a directory of its own")
    record = read_run_record(
        run_dir
    )  # every key checked: a hand-edited record fails here, not after the rerun
    if record["variants"]:
        first = next(iter(record["variants"]))
        raise InputError(
            f"{run_dir}: a multi-model run; reproduce one of its variants, e.g. {run_dir / first}"
        )
    recorded = read_metrics(run_dir)
    epochs = len(recorded) if epochs is None else epochs
    if not 1 <= epochs <= len(recorded):
        raise InputError(f"--epochs {epochs}: {run_dir / METRICS_FILE} records epochs 1 to {len(recorded)}")
    cfg = _rerun_config(run_dir, record, out, overrides or {})
    data = load_data(cfg.data, split=record["data"]["split"])
    digest = data_digest(data.images, data.labels)
    if digest != record["data"]["sha256"]:
        raise InputError(
            f"--data {cfg.data}: its images and labels have {digest}, the run recorded {record['data']['sha256']}; "
            "not the data this run was trained on"
        )
    created = not out.exists()
    try:
        rerun = _train(cfg, data, epochs, quiet)
    except BaseException:
        if created:  # a rerun that failed halfway compares nothing: leave no partial directory behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    rep = Reproduction(run_dir, out, epochs, compare_metrics(recorded[:epochs], rerun[0][:epochs]))
    rerun_record = rerun[1]
    rep.causes = [
        *environment_differences(record["environment"], rerun_record["environment"]),
        *_precision_change(record, rerun_record),
        *_config_changes(record["config"], rerun_record["config"]),
    ]
    if not rep.identical and not rep.causes and rerun_record["environment"]["machine"]["gpus"]:
        rep.causes.append(GPU_NOISE)
    rep.verdict = _verdict(rep)
    return rep


def _train(cfg: TrainConfig, data, epochs: int, quiet: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train the first `epochs` epochs of `cfg`; (its metrics, its run.json)."""
    accelerator = make_accelerator(cfg, project_dir=cfg.run_dir())
    main = accelerator.is_main_process
    with TrainProgress(enabled=main, quiet=quiet) as progress, failure_recorded(cfg.run_dir(), main):
        Trainer(cfg, accelerator, data, progress, epoch_limit=epochs).run()
    out = cfg.run_dir()
    return read_metrics(out), read_run_record(out)
