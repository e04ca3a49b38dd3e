"""`bench time-to-accuracy`: wall seconds from `fashiondist train`'s process start until validation accuracy
first reaches each target.

The training runs as a child process, exactly as a user starts it, so the seconds count Python's start, the
imports, loading the data and building the model, as well as training and per-epoch evaluation. The child's
metrics.jsonl has one line per epoch with `val_acc` and `time` (time.time() when the epoch ended); a target's
time is the first epoch's `time` at or above it minus the moment the child was started. Also reported per
target: the engine's own `train_seconds` (the training loop only) and `elapsed_seconds` (since its run
started), so `startup` = seconds - elapsed_seconds and `train share` = train_seconds / seconds show where
the rest went. Accuracy is known once per epoch, so a time is an epoch boundary.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashiondist.bench.child_process import child_env
from fashiondist.bench.stats import Stat
from fashiondist.errors import FashiondistError, InputError
from fashiondist.run_layout import METRICS_FILE, SUMMARY_FILE, read_json, read_metrics

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class AccuracyBench:
    """What `bench time-to-accuracy` runs."""

    recipe: str  # a model name (its registry recipe) or an experiment YAML
    targets: tuple[float, ...] = (0.90, 0.91, 0.92, 0.93)
    data: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    precision: str | None = None
    overrides: tuple[str, ...] = ()  # `--set KEY=VALUE` passed through
    repeats: int = 1
    out: Path | None = None  # keep the run directories here; a temporary directory otherwise

    def check(self) -> None:
        if not self.targets or not all(0.0 < t <= 1.0 for t in self.targets):
            raise InputError(
                f"--targets {','.join(map(str, self.targets))}: accuracies must be fractions in (0, 1], e.g. 0.90,0.92"
            )
        if self.repeats < 1:
            raise InputError(f"--repeats {self.repeats}: must be at least 1")
        if self.out is not None and self.out.exists() and any(self.out.iterdir()):
            raise InputError(f"--out {self.out}: exists and is not empty; the runs need a fresh directory")

    def recipe_args(self) -> list[str]:
        from fashiondist.models.registry import list_models

        if self.recipe.endswith(YAML_SUFFIXES):
            if not Path(self.recipe).is_file():
                raise InputError(f"--recipe {self.recipe}: no such file")
            return ["--config", self.recipe]
        if self.recipe in list_models():
            return ["--model", self.recipe]
        raise InputError(
            f"--recipe {self.recipe!r}: neither a model nor a .yaml file",
            hint=f"a model ({', '.join(list_models())}) or an experiment YAML such as launch/experiments/*.yaml",
        )

    def command(self, out: Path) -> list[str]:
        """The `fashiondist train` command line the benchmark runs (the same as the `fashiondist` script)."""
        command = [
            sys.executable,
            "-m",
            "fashiondist",
            "train",
            *self.recipe_args(),
            "--out",
            str(out),
            "--quiet",
        ]
        for flag, value in (
            ("--data", self.data),
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--precision", self.precision),
        ):
            if value is not None:
                command += [flag, str(value)]
        for pair in self.overrides:
            command += ["--set", pair]
        return command


def _target_key(target: float) -> str:
    return f"{target:.4f}".rstrip("0").rstrip(".")


def _run_once(
    bench: AccuracyBench, out: Path, repeat: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """One `fashiondist train` process; one record per trained variant (a YAML may name several)."""
    command = bench.command(out)
    log(f"repeat {repeat + 1}/{bench.repeats}: {' '.join(command[1:])}")
    start = time.time()  # the same clock as the child's per-epoch `time`
    done = subprocess.run(command, env=child_env(), stdout=subprocess.DEVNULL)
    wall = time.time() - start
    if done.returncode != 0:
        raise FashiondistError(
            f"bench time-to-accuracy: fashiondist train exited with code {done.returncode} (its messages are above)"
        )
    runs = []
    for metrics in sorted(out.rglob(METRICS_FILE)):
        records = read_metrics(metrics.parent)
        summary = (
            read_json(metrics.parent / SUMMARY_FILE) if (metrics.parent / SUMMARY_FILE).is_file() else {}
        )
        targets: dict[str, dict[str, Any] | None] = {}
        for target in bench.targets:
            first = next((r for r in records if r["val_acc"] >= target), None)
            targets[_target_key(target)] = (
                None
                if first is None
                else {
                    "seconds": first["time"] - start,
                    "epoch": first["epoch"],
                    "val_acc": first["val_acc"],
                    "train_seconds": first["train_seconds"],
                    "elapsed_seconds": first["elapsed_seconds"],
                }
            )
        runs.append(
            {
                "repeat": repeat,
                "model": summary.get("model", metrics.parent.name),
                "run_dir": str(metrics.parent),
                "process_seconds": wall,
                "best_val_acc": max((r["val_acc"] for r in records), default=None),
                "engine_images_per_s": summary.get("images_per_s"),
                "epochs": [
                    {
                        "epoch": r["epoch"],
                        "val_acc": r["val_acc"],
                        "seconds": r["time"] - start,
                        "train_seconds": r["train_seconds"],
                        "elapsed_seconds": r["elapsed_seconds"],
                        "images_per_s": r["images_per_s"],
                    }
                    for r in records
                ],
                "targets": targets,
            }
        )
    if not runs:
        raise FashiondistError(
            f"bench time-to-accuracy: fashiondist train wrote no {METRICS_FILE} under {out}"
        )
    return runs


def _summary(bench: AccuracyBench, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        for target in bench.targets:
            hits = [
                r["targets"][_target_key(target)]
                for r in mine
                if r["targets"][_target_key(target)] is not None
            ]
            rows.append(
                {
                    "model": model,
                    "target": target,
                    "reached": len(hits),
                    "runs": len(mine),
                    "seconds": Stat.of([h["seconds"] for h in hits]).to_dict() if hits else None,
                    "epoch": Stat.of([h["epoch"] for h in hits]).to_dict() if hits else None,
                    "startup_seconds": Stat.of([h["seconds"] - h["elapsed_seconds"] for h in hits]).to_dict()
                    if hits
                    else None,
                    "ratios": {
                        "train_seconds/seconds": Stat.of(
                            [h["train_seconds"] / h["seconds"] for h in hits]
                        ).to_dict()
                    }
                    if hits
                    else None,
                }
            )
    return rows


def run_accuracy_bench(bench: AccuracyBench, log: Callable[[str], None] = print) -> dict[str, Any]:
    bench.check()
    bench.recipe_args()  # a bad --recipe fails before anything starts
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fashiondist-tta-") as tmp:
        parent = bench.out if bench.out is not None else Path(tmp)
        for repeat in range(bench.repeats):
            runs += _run_once(bench, parent / f"repeat-{repeat + 1}", repeat, log)
        command = bench.command(parent / "repeat-N")
    return {
        "benchmark": "time-to-accuracy",
        "settings": {
            "recipe": bench.recipe,
            "data": bench.data,
            "targets": list(bench.targets),
            "repeats": bench.repeats,
            "command": " ".join(command[1:]),
            "runs_kept_in": None if bench.out is None else str(bench.out),
            "unit": "wall seconds from `fashiondist train` process start to the end of the first epoch at the target",
        },
        "runs": runs,
        "summary": _summary(bench, runs),
    }


def accuracy_tables(result: dict[str, Any], caption: str) -> list[Any]:
    from rich.table import Table

    from fashiondist.bench.report import fmt_seconds

    settings = result["settings"]
    table = Table(
        title=f"time to validation accuracy: {settings['recipe']}, {settings['repeats']} run(s), median and min-max",
        caption=caption,
    )
    for column in ("model", "target", "reached", "seconds", "epoch", "startup", "train share"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in result["summary"]:
        if row["seconds"] is None:
            table.add_row(
                row["model"], f"{row['target']:.2%}", f"0/{row['runs']}", "not reached", "-", "-", "-"
            )
            continue
        epoch = Stat.of(row["epoch"]["samples"])
        table.add_row(
            row["model"],
            f"{row['target']:.2%}",
            f"{row['reached']}/{row['runs']}",
            fmt_seconds(Stat.of(row["seconds"]["samples"])),
            f"{epoch.median:g}",
            fmt_seconds(Stat.of(row["startup_seconds"]["samples"])),
            f"{Stat.of(row['ratios']['train_seconds/seconds']['samples']).median:.0%}",
        )
    return [table]
