"""The accelerate training loop: DDP, mixed precision, gradient accumulation, exact evaluation, resume.

    fashiondist train --model convnet --data fashion-mnist                             # one process
    accelerate launch --multi_gpu --num_processes 8 -m fashiondist train --model convnet ...   # 8 GPUs
    accelerate launch --config_file launch/accelerate/multi_node.yaml --machine_rank 0 \\
        -m fashiondist train --model convnet ...                                         # node 0 of 2
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m fashiondist train --model convnet ...                                         # any node

Correctness under DDP: the global batch (per-device x accumulation x world size) is fixed by the config,
every rank draws the same (seed, epoch) permutation and augmentation plan and takes its own shard of each
global batch, so N processes follow the same trajectory as one (up to floating-point summation order) when
the per-device batch is the same (dropout masks are seeded per micro-batch of the global batch, BatchNorm
normalises over each micro-batch), or with `sync_bn` at any per-device batch for models without dropout.
Before every evaluation and checkpoint the ranks agree on BatchNorm buffers (`engine.batchnorm`), so what
is evaluated on every rank, saved in best/ and exported is one model.
"""

from __future__ import annotations

import datetime
import functools
import json
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list

from fashiondist import __version__
from fashiondist.atomic_io import atomic_write, write_json
from fashiondist.config import TrainConfig, save_yaml
from fashiondist.data.digest import data_record
from fashiondist.data.folds import run_split
from fashiondist.data.sources import Dataset
from fashiondist.engine import run_checkpoint, run_record
from fashiondist.engine.batchnorm import agree_on_buffers, ranks_agree
from fashiondist.engine.distill import augmented_teacher, teacher_targets
from fashiondist.engine.evaluate import EvalResult, evaluate, save_predictions
from fashiondist.engine.preemption import PreemptionWatch
from fashiondist.engine.prepared import TrainTally, prepare_training
from fashiondist.engine.progress import TrainProgress
from fashiondist.engine.run_state import RunState
from fashiondist.engine.schedule import lr_at
from fashiondist.engine.switches import speed_switches
from fashiondist.errors import InputError
from fashiondist.hardware import PrecisionChoice, cpu_forced, this_machine_precision, warn_once
from fashiondist.metrics import cross_entropy
from fashiondist.models.checkpoint import initial_weights, save_model
from fashiondist.models.complexity import count_parameters, macs_per_image
from fashiondist.run_layout import BEST_DIR, CONFIG_FILE, LAST_DIR, METRICS_FILE, SUMMARY_FILE

# How often (optimizer steps) the progress bar reads the running loss and the non-finite check looks back.
REFRESH_EVERY = 25


@dataclass
class RunResult:
    run_dir: Path
    model: str
    best_val_acc: float
    best_epoch: int
    epochs_done: int
    train_seconds: float
    images_per_s: float
    preempted_by: str | None = None  # the signal that stopped the run, when one did


def make_accelerator(cfg: TrainConfig, project_dir: str | Path | None = None) -> Accelerator:
    """One Accelerator per process. Precision is fixed for its life; accumulation is set per run.

    `precision` auto comes from the hardware and the launcher's config (`fashiondist.hardware`). Without a
    GPU the Accelerator is told so: under torchrun (or a launcher without ACCELERATE_USE_CPU) it would
    otherwise start N world-size-1 copies instead of one gloo group. `compile` asks accelerate's dynamo
    plugin for torch.compile (inductor); without it the launcher's config decides (by default: no).
    """
    choice = this_machine_precision(cfg.precision)  # the run's one resolution: see `run_precision`
    # dist_timeout: how long a collective waits for a missing peer before the process group gives up
    group = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.dist_timeout))
    accelerator = Accelerator(
        cpu=cpu_forced() or not torch.cuda.is_available(),
        mixed_precision=choice.precision,
        dynamo_backend="inductor" if cfg.compile else None,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=cfg.log_with,
        project_dir=str(project_dir) if project_dir is not None else None,
        kwargs_handlers=[group],
    )
    _PRECISIONS[accelerator] = choice
    if choice.warning and accelerator.is_main_process:
        warn_once(choice.warning)
    return accelerator


_PRECISIONS: weakref.WeakKeyDictionary[Accelerator, PrecisionChoice] = weakref.WeakKeyDictionary()


def run_precision(accelerator: Accelerator, requested: str) -> PrecisionChoice:
    """The precision choice `make_accelerator` resolved for this Accelerator (once per run; the trainer and
    the run records read it here). An Accelerator made elsewhere (a test's) reports what it was given."""
    choice = _PRECISIONS.get(accelerator)
    if choice is None:
        given = accelerator.mixed_precision
        choice = PrecisionChoice(
            getattr(requested, "value", requested), given, f"the Accelerator was given {given}"
        )
    return choice


@dataclass(frozen=True)
class _EpochOutcome:
    """The main process's decision after an epoch's evaluation, which every rank follows."""

    improved: bool
    stale_epochs: int
    stop: bool  # early stopping ends the run


class Trainer:
    """Trains one variant of `cfg` on `data` into `cfg.run_dir()`. Every rank constructs one."""

    def __init__(
        self,
        cfg: TrainConfig,
        accelerator: Accelerator,
        data: Dataset,
        progress: TrainProgress,
        epoch_limit: int | None = None,  # stop after this many epochs (the schedule still spans cfg.epochs)
    ):
        if data.labels is None:
            raise InputError(
                f"--data {cfg.data}: has no labels, so it cannot be trained on",
                hint="pass a train.csv or an IDX directory with labels",
            )
        self.cfg = cfg
        self.acc = accelerator
        self.progress = progress
        self.run_dir = cfg.run_dir()
        self.num_classes = data.num_classes
        self.class_names = list(data.class_names)
        self.epoch_limit = min(cfg.epochs, epoch_limit or cfg.epochs)
        self.data_record = data_record(data) if accelerator.is_main_process else None
        self.precision_choice = run_precision(accelerator, cfg.precision)  # what `auto` picked, and why

        train_idx, val_idx = run_split(data.labels, cfg)  # private test, fold or val_fraction split
        # the validation split lives on the device too: uint8 [M, 1, H, W], int64 [M]
        self.val_images = torch.as_tensor(data.images[val_idx], device=accelerator.device).unsqueeze(1)
        self.val_labels = torch.as_tensor(data.labels[val_idx], dtype=torch.int64, device=accelerator.device)
        last = run_checkpoint.load_last(cfg.resume, self.run_dir) if cfg.resume is not None else None
        self.resumed_from = last.directory if last is not None else None
        self.state = self._start_state(last)
        self.prepared = prepare_training(
            cfg, accelerator, data.images[train_idx], data.labels[train_idx], self.num_classes,
            self._start_weights(last), self._teacher(accelerator, data.images[train_idx]),
        )  # fmt: skip
        self.params = count_parameters(self.raw_model)
        self.macs = macs_per_image(self.raw_model)
        # Every rank keeps the best weights in memory for the final predictions, so that nodes without a
        # shared file system can finish (resuming does need one: every rank reads last/ and best/).
        self.best_weights: dict[str, torch.Tensor] | None = None
        if last is not None:
            self._restore(last)
        # read on every rank, so that a damaged file stops them all (not the main one alone, mid-collective)
        self.kept_metrics = (
            run_checkpoint.kept_metric_lines(self.run_dir / METRICS_FILE, self.state.epoch)
            if last is not None
            else ([], None)  # a new run into an old directory keeps none of its lines
        )

    # --- state -----------------------------------------------------------------------------------------
    @property
    def raw_model(self) -> torch.nn.Module:
        return self.prepared.raw_model

    def _start_weights(self, last: run_checkpoint.LastCheckpoint | None) -> dict[str, torch.Tensor] | None:
        """What training starts from: a resumed run's last/, else `--init`'s weights, else None (random)."""
        cfg = self.cfg
        if last is not None:
            return last.weights
        if cfg.init:  # every rank reads them (DDP's start-up broadcast would copy rank 0's anyway)
            return initial_weights(cfg.init, cfg.model, cfg.model_kwargs, self.num_classes)
        return None

    def _teacher(self, acc: Accelerator, images: np.ndarray) -> torch.Tensor | torch.nn.Module | None:
        """What is distilled (engine.distill): the teacher's cached probabilities of the training `images`, or
        under `distill_augmented` the teacher itself; None without `--teacher`."""
        cfg = self.cfg
        if not cfg.teacher:
            return None
        if cfg.distill_augmented:
            return augmented_teacher(acc, cfg, self.progress.log)
        return teacher_targets(acc, cfg, images, self.run_dir, self.progress.log)

    def _start_state(self, last: run_checkpoint.LastCheckpoint | None) -> RunState:
        """A fresh state, or the one in `last/` (checked against this run)."""
        cfg = self.cfg
        if last is None:
            keys = run_checkpoint.resume_keys(cfg.to_dict())
            return RunState(cfg.model, cfg.model_kwargs, cfg.batch_size, resume_keys=keys)
        run_checkpoint.check_resumable(last, cfg.to_dict())
        return last.state

    def _restore(self, last: run_checkpoint.LastCheckpoint) -> None:
        """Optimizer, EMA, loss scaler and best weights of a resumed run (the model's weights are in already)."""
        prep, restore = self.prepared, run_checkpoint.restore_into
        restore(
            last.directory / run_checkpoint.OPTIMIZER_STATE, prep.optimizer.load_state_dict, last.optimizer
        )
        if prep.ema is not None and last.ema_weights is not None:
            ema_file = last.directory / run_checkpoint.EMA_DIR / run_checkpoint.WEIGHTS
            restore(ema_file, prep.ema.module.load_state_dict, last.ema_weights)
        if self.state.scaler and self.acc.scaler is not None:
            restore(
                last.directory / run_checkpoint.TRAINER_STATE,
                self.acc.scaler.load_state_dict,
                self.state.scaler,
            )
        if last.fallback_note:
            self.progress.log(last.fallback_note)
        best = self.run_dir / BEST_DIR / "model.safetensors"
        if best.is_file():
            self.best_weights = {
                k: v.to(self.acc.device) for k, v in run_checkpoint.read_tensors(best).items()
            }

    def _save_weights(
        self, model: torch.nn.Module, directory: Path, extra: dict[str, Any] | None = None
    ) -> None:
        save_model(
            directory, model, name=self.cfg.model, kwargs=self.cfg.model_kwargs, num_classes=self.num_classes,
            class_names=self.class_names, extra_meta=extra,
        )  # fmt: skip

    def _save_last(self) -> None:
        if not self.acc.is_main_process:
            return
        if self.acc.scaler is not None:
            self.state.scaler = self.acc.scaler.state_dict()
        ema = self.prepared.ema
        save_ema = functools.partial(self._save_weights, ema.module) if ema else None
        save = functools.partial(self._save_weights, self.raw_model)
        run_checkpoint.save_last(self.run_dir, save, self.prepared.optimizer, save_ema, self.state.to_json())

    # --- the loop --------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        with speed_switches(self.acc.device.type):  # process-wide: on for this run only (engine.switches)
            return self._run()

    def _run(self) -> RunResult:
        cfg, acc, state = self.cfg, self.acc, self.state
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stray in run_checkpoint.sweep_partial(self.run_dir):
                self.progress.log(f"removed {stray}, left by a run that crashed while saving")
            save_yaml(cfg, self.run_dir / CONFIG_FILE)
            self._truncate_metrics()
            run_record.begin(
                self.run_dir, cfg.to_dict(), acc, self.data_record, self.precision_choice,
                resumed=self.resumed_from is not None,
            )  # fmt: skip
        acc.wait_for_everyone()
        self._announce()
        run_start = time.perf_counter()
        preempted = None
        # The watch stays on through the preemption save and the record: a second signal (a launcher's
        # PDEATHSIG after the first, a scheduler's repeat) is only recorded then, never the default death mid-save.
        with PreemptionWatch() as watch:
            while state.epoch < self.epoch_limit:
                preempted = self._train_epoch(watch)
                if preempted:
                    break
                if self._end_epoch(run_start):
                    break
            if preempted:
                self._agree_on_buffers()
                self._save_last()
                acc.wait_for_everyone()
                self.progress.log(
                    f"{preempted}: saved {self.run_dir / LAST_DIR} at step {state.step}; resume with the same "
                    f"command plus `--resume {self.run_dir / LAST_DIR}` (or `--resume auto`)"
                )
                if acc.is_main_process:
                    run_record.finish(self.run_dir, "preempted", self._record_result())
        if not preempted:
            self._finish()
            if acc.is_main_process:
                run_record.finish(self.run_dir, "finished", self._record_result())
        return RunResult(
            self.run_dir, cfg.model, state.best_val_acc, state.best_epoch, state.epoch, state.train_seconds,
            self._images_per_s(), preempted,
        )  # fmt: skip

    def _announce(self) -> None:
        lay, state = self.prepared.batches.layout, self.state
        where = (
            f"resuming {self.resumed_from} at epoch {state.epoch + 1}, step {state.step}; "
            if self.resumed_from
            else ""
        )
        images = f"{self.prepared.batches.num_images:,} train / {len(self.val_labels):,} val images"
        self.progress.log(
            f"{self.cfg.model}: {where}{images}, "
            f"{self.num_classes} classes, {self.params:,} params; global batch {lay.global_batch} = "
            f"{lay.per_device} per device x {lay.grad_accum} accumulation x {lay.world_size} process(es); "
            f"precision {self.acc.mixed_precision} on {self.acc.device} ({self.precision_choice.reason}); "
            f"{self.prepared.switches}"
        )

    def _train_epoch(self, watch: PreemptionWatch) -> str | None:
        """Train the epoch in progress from its next step; return the signal's name when a preemption stopped it."""
        cfg, acc, state, prep = self.cfg, self.acc, self.state, self.prepared
        steps = prep.batches.steps_per_epoch
        # each rank starts from its share of the all-rank sums a preempted epoch saved, so they add back up
        tally = TrainTally(acc.device, state.step, [s / acc.num_processes for s in state.epoch_sums])
        micro_batches = prep.batches.epoch(state.epoch, state.epoch_step)
        self.progress.start_epoch(
            f"{cfg.model} epoch {state.epoch + 1}/{cfg.epochs}", steps, state.epoch_step
        )
        prep.model.train()
        t0 = time.perf_counter() - state.epoch_seconds
        while state.epoch_step < steps:
            state.step += prep.step(micro_batches, state.step, tally)  # a step the fp16 scaler skipped: + 0
            state.epoch_step += 1
            if state.epoch_step % REFRESH_EVERY == 0 or state.epoch_step == steps:
                self._check_finite(tally)
                seen = float(tally.sums[2])
                loss, accuracy = float(tally.sums[0]) / seen, float(tally.sums[1]) / seen
                self.progress.update(
                    state.epoch_step, loss, accuracy, seen * acc.num_processes / (time.perf_counter() - t0)
                )
            if watch.requested(acc, state.epoch * steps + state.epoch_step):
                self._store_tally(tally, t0)
                return watch.signal_name or "preemption signal (on another rank)"
        self._store_tally(tally, t0)
        return None

    def _store_tally(self, tally: TrainTally, t0: float) -> None:
        """Check the losses, then store the epoch's all-rank sums and seconds in the state (to save or report)."""
        self._check_finite(tally)
        self.state.epoch_sums = self.acc.reduce(tally.sums.clone(), reduction="sum").tolist()
        self.state.epoch_seconds = time.perf_counter() - t0

    def _check_finite(self, tally: TrainTally) -> None:
        bad = int(tally.first_bad)
        if bad >= 0:
            ours = (
                self.resumed_from is not None or self.state.epoch > 0
            )  # last/ of this run, not an older one's
            raise run_checkpoint.non_finite_loss(
                self.cfg.model, bad + 1, self.state.epoch + 1, self.run_dir if ours else None,
                str(self.acc.mixed_precision),
            )  # fmt: skip

    def _eval_model(self) -> torch.nn.Module:
        return self.prepared.ema.module if self.prepared.ema is not None else self.raw_model

    def _ema_module(self) -> torch.nn.Module | None:
        return self.prepared.ema.module if self.prepared.ema is not None else None

    def _agree_on_buffers(self) -> None:
        """Rank 0's BatchNorm buffers on every rank, live model and EMA (why rank 0's: engine.batchnorm)."""
        agree_on_buffers(self.acc.num_processes, self.raw_model, self._ema_module())

    def _end_epoch(self, run_start: float) -> bool:
        """Evaluate, log, checkpoint; return True when early stopping ends the run."""
        cfg, acc, state = self.cfg, self.acc, self.state
        t_eval = time.perf_counter()
        self._agree_on_buffers()  # before evaluating on every rank, and before best/ and last/ are saved
        result = evaluate(
            acc, self._eval_model(), self.val_images, self.val_labels, cfg.eval_batch_size, cfg.tta
        )
        state.train_seconds += state.epoch_seconds
        record = self._epoch_record(result, time.perf_counter() - t_eval, run_start)
        record["ranks_in_sync"] = self._ranks_in_sync()  # what last/ and best/ save: parameters and buffers
        outcome = self._decide(result)
        epoch = state.epoch + 1  # 1-based from here on, as users count
        if outcome.improved:
            state.best_val_acc, state.best_epoch = result.accuracy, epoch
            self.best_weights = {k: v.detach().clone() for k, v in self._eval_model().state_dict().items()}
        state.epoch, state.epoch_step, state.epoch_sums, state.epoch_seconds = epoch, 0, [0.0, 0.0, 0.0], 0.0
        state.stale_epochs = outcome.stale_epochs
        if acc.is_main_process:
            with open(self.run_dir / METRICS_FILE, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if outcome.improved:
                self._save_best(result, epoch)
            acc.log({k: v for k, v in record.items() if k != "time"}, step=epoch)
        self._save_last()
        acc.wait_for_everyone()
        self._log_epoch(record, outcome)
        return outcome.stop

    def _epoch_record(self, result: EvalResult, eval_seconds: float, run_start: float) -> dict[str, Any]:
        """The epoch's metrics.jsonl line (the state's sums and seconds are the finished epoch's)."""
        cfg, state = self.cfg, self.state
        loss_sum, correct, seen = state.epoch_sums
        return {
            "epoch": state.epoch + 1,
            "step": state.step,
            # Both losses are the training objective (with the run's label smoothing), so their curves compare;
            # val_nll is the plain cross-entropy (the evaluation's log loss).
            "loss": f"cross-entropy, label smoothing {cfg.label_smoothing:g}",
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "val_loss": cross_entropy(result.labels, result.probs, cfg.label_smoothing),
            "val_nll": result.loss,
            "val_acc": result.accuracy,
            "val_count": result.count,
            "lr": lr_at(
                max(state.step - 1, 0), self.prepared.total_steps, cfg.lr, cfg.warmup_fraction, cfg.schedule
            ),
            "images_per_s": seen / state.epoch_seconds,
            "epoch_seconds": state.epoch_seconds,
            "eval_seconds": eval_seconds,
            "train_seconds": state.train_seconds,
            "elapsed_seconds": time.perf_counter() - run_start,
            "time": time.time(),
        }

    def _decide(self, result: EvalResult) -> _EpochOutcome:
        """The main process decides whether the epoch improved and whether to stop; every rank follows."""
        decision = [None]
        if self.acc.is_main_process:
            improved = result.accuracy > self.state.best_val_acc
            stale = 0 if improved else self.state.stale_epochs + 1
            decision = [
                _EpochOutcome(improved, stale, bool(self.cfg.early_stop and stale >= self.cfg.early_stop))
            ]
        return broadcast_object_list(decision)[0]

    def _log_epoch(self, record: dict[str, Any], outcome: _EpochOutcome) -> None:
        cfg, mark = self.cfg, " *" if outcome.improved else ""
        self.progress.log(
            f"{cfg.model} epoch {record['epoch']}/{cfg.epochs}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f} | "
            f"val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}{mark} | {record['images_per_s']:,.0f} img/s, "
            f"{record['epoch_seconds']:.1f}s"
        )
        if outcome.stop:
            self.progress.log(
                f"{cfg.model}: early stop, no better validation accuracy for {cfg.early_stop} epochs"
            )

    def _save_best(self, result: EvalResult, epoch: int) -> None:
        extra = {
            "metric": {"val_acc": result.accuracy, "val_loss": result.loss},
            "epoch": epoch,
            "tta": self.cfg.tta.value,
            "ema": self.prepared.ema is not None,
        }
        with run_checkpoint.atomic_dir(self.run_dir / BEST_DIR) as tmp:
            self._save_weights(self._eval_model(), tmp, extra)

    def _truncate_metrics(self) -> None:
        """On resume, drop metric lines past the checkpoint (a run killed after logging but before saving) and
        a torn last line (killed while writing it), with a warning."""
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return
        keep, warning = self.kept_metrics
        if warning:
            self.progress.log(warning)
        with atomic_write(path) as fh:
            fh.write("".join(line + "\n" for line in keep).encode())

    def _record_result(self) -> dict[str, Any]:
        state = self.state
        return {"epochs": state.epoch, "best_val_acc": state.best_val_acc, "best_epoch": state.best_epoch}

    def _windows_done(self) -> int:
        """Accumulation windows trained so far: optimizer steps taken plus those the fp16 scaler skipped."""
        return self.state.epoch * self.prepared.batches.steps_per_epoch + self.state.epoch_step

    def _images_per_s(self) -> float:
        done = self._windows_done() * self.cfg.batch_size
        return done / self.state.train_seconds if self.state.train_seconds > 0 else 0.0

    def _finish(self) -> None:
        """Predict the validation split with the best weights and summarise the run."""
        acc = self.acc
        in_sync = self._ranks_in_sync()  # the final weights, before the best ones replace them
        best = self._eval_model()
        best.load_state_dict(self.best_weights)
        result = evaluate(acc, best, self.val_images, self.val_labels, self.cfg.eval_batch_size, self.cfg.tta)
        if not in_sync:
            self.progress.log(
                f"warning: {self.cfg.model}: the ranks' final weights differ; DDP did not keep them in sync"
            )
        if acc.is_main_process:
            save_predictions(self.run_dir, result.labels, result.probs)
            write_json(self.run_dir / SUMMARY_FILE, self._summary(result, in_sync))
        acc.wait_for_everyone()

    def _summary(self, result: EvalResult, in_sync: bool) -> dict[str, Any]:
        """summary.json: what was trained, how fast, how well (the best epoch, predicted again at the end)."""
        cfg, state = self.cfg, self.state
        return {
            "model": cfg.model,
            "model_kwargs": cfg.model_kwargs,
            "params": self.params,
            "macs": self.macs,
            "train_seconds": state.train_seconds,
            "images_per_s": self._images_per_s(),
            "best_val_acc": state.best_val_acc,
            "best_epoch": state.best_epoch,
            "epochs": state.epoch,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "world_size": self.acc.num_processes,
            "precision": self.acc.mixed_precision,
            "precision_reason": self.precision_choice.reason,
            "skipped_steps": self._windows_done() - state.step,  # by the fp16 loss scaler (inf/NaN gradients)
            "speed_switches": self.prepared.switches,
            "tta": cfg.tta.value,
            "global_batch": cfg.batch_size,
            "val_count": result.count,
            "ranks_in_sync": in_sync,
            "version": __version__,
        }

    def _ranks_in_sync(self) -> bool:
        """DDP sanity check: every rank holds bitwise the same parameters and buffers (BatchNorm statistics),
        live model and EMA, compared by two checksums."""
        return ranks_agree(self.acc.num_processes, self.raw_model, self._ema_module())
