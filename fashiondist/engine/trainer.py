"""The accelerate training loop: DDP, mixed precision, gradient accumulation, exact evaluation, resume.

    fashiondist train --model convnet --data fashion-mnist                             # one process
    accelerate launch --multi_gpu --num_processes 8 -m fashiondist train --model convnet ...   # 8 GPUs
    accelerate launch --config_file launch/accelerate/multi_node.yaml --machine_rank 0 \\
        -m fashiondist train --model convnet ...                                         # node 0 of 2
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m fashiondist train --model convnet ...                                         # any node

Correctness under DDP: the global batch (per-device x accumulation x world size) is fixed by the config,
every rank draws the same (seed, epoch) permutation and augmentation plan and takes its own shard of each
global batch, so N processes follow the same trajectory as one (up to floating-point summation order, and
except for BatchNorm statistics and dropout masks, which are per process by nature).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from safetensors.torch import load_file

from fashiondist import __version__
from fashiondist.config import Optimizer, TrainConfig, save_yaml
from fashiondist.data.atomic import atomic_write
from fashiondist.data.device import Layout, TrainBatches
from fashiondist.data.sources import Dataset
from fashiondist.data.split import stratified_split
from fashiondist.engine import checkpoint
from fashiondist.engine.ema import Ema
from fashiondist.engine.evaluate import EvalResult, evaluate, save_predictions
from fashiondist.engine.preemption import PreemptionWatch
from fashiondist.engine.progress import TrainProgress
from fashiondist.engine.schedule import lr_at
from fashiondist.errors import FashiondistError, InputError
from fashiondist.hardware import this_machine_precision, warn_once
from fashiondist.models.checkpoint import save_model
from fashiondist.models.complexity import count_parameters, macs_per_image
from fashiondist.models.registry import create_model

# How often (optimizer steps) the progress bar reads the running loss and the non-finite check looks back.
REFRESH_EVERY = 25
_STEP_SEED_STRIDE = 1_000_003


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
    otherwise start N world-size-1 copies instead of one gloo group.
    """
    choice = this_machine_precision(cfg.precision)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=choice.precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=cfg.log_with,
        project_dir=str(project_dir) if project_dir is not None else None,
    )
    if choice.warning and accelerator.is_main_process:
        warn_once(choice.warning)
    return accelerator


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed dropout for optimizer step `step` from (seed, rank, step): a resumed run draws the same masks."""
    torch.manual_seed((seed * _STEP_SEED_STRIDE + step) * 64 + rank)


def micro_step(acc: Accelerator, model, optimizer, x, y, cfg: TrainConfig, step: int, total_steps: int):
    """One micro-batch under `accumulate`: forward, backward; on the window's last micro-batch set the lr of
    optimizer step `step`, clip and step (accelerate's optimizer skips the others). Returns (loss, logits)."""
    with acc.accumulate(model):
        loss, logits = model(x, targets=y, label_smoothing=cfg.label_smoothing)
        acc.backward(loss)
        if acc.sync_gradients:
            lr = lr_at(step, total_steps, cfg.lr, cfg.warmup_fraction, cfg.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if cfg.grad_clip > 0:
                acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach(), logits


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and kernels only; biases and normalisation scales are left alone."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer is Optimizer.SGD:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer is Optimizer.ADAM:
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


class Trainer:
    """Trains one variant of `cfg` on `data` into `cfg.run_dir()`. Every rank constructs one."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator, data: Dataset, progress: TrainProgress):
        if data.labels is None:
            raise InputError(f"--data {cfg.data}: has no labels, so it cannot be trained on", hint="pass a train.csv or an IDX directory with labels")
        self.cfg = cfg
        self.acc = accelerator
        self.progress = progress
        self.run_dir = cfg.run_dir()
        self.num_classes = data.num_classes
        self.class_names = list(data.class_names)
        self.layout = Layout.of(cfg.batch_size, cfg.grad_accum, accelerator.num_processes)

        train_idx, val_idx = stratified_split(data.labels, cfg.val_fraction, cfg.seed)
        self.batches = TrainBatches(
            data.images[train_idx], data.labels[train_idx], self.layout, accelerator.process_index,
            accelerator.device, cfg.seed, cfg.augment, cfg.shift, cfg.erase,
        )  # fmt: skip
        self.val_images = torch.as_tensor(data.images[val_idx], device=accelerator.device).unsqueeze(1)  # [M,1,H,W]
        self.val_labels = torch.as_tensor(data.labels[val_idx], dtype=torch.int64, device=accelerator.device)
        self.total_steps = self.batches.steps_per_epoch * cfg.epochs

        set_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        model = create_model(cfg.model, self.num_classes, **cfg.model_kwargs)
        self.params = count_parameters(model)
        self.macs = macs_per_image(model)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.state = self._fresh_state()
        last = self._resume_dir()
        if last is not None:
            self.state = checkpoint.load_trainer_state(last)
            self._check_resumable(last)
            model.load_state_dict(load_file(str(last / "model.safetensors")))
        model = model.to(accelerator.device)
        optimizer = build_optimizer(cfg, model)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        accelerator.gradient_accumulation_steps = cfg.grad_accum
        accelerator.step = 0  # micro-step counter: every epoch (and every resume) starts on a window boundary
        self.ema = Ema(self.raw_model, cfg.ema) if cfg.ema > 0 else None
        if last is not None:
            self._restore(last)
        self.resumed_from = last
        # Every rank keeps the best weights in memory for the final predictions, so that nodes without a
        # shared file system can finish (resuming does need one: every rank reads last/ and best/).
        self.best_weights: dict[str, torch.Tensor] | None = None
        if last is not None and (self.run_dir / "best" / "model.safetensors").is_file():
            self.best_weights = load_file(str(self.run_dir / "best" / "model.safetensors"), device=str(accelerator.device))

    # --- state -----------------------------------------------------------------------------------------
    @property
    def raw_model(self) -> torch.nn.Module:
        return self.acc.unwrap_model(self.model)

    def _fresh_state(self) -> dict[str, Any]:
        return {
            "model": self.cfg.model,
            "model_kwargs": self.cfg.model_kwargs,
            "global_batch": self.cfg.batch_size,
            "epoch": 0,  # the epoch in progress (0-based)
            "epoch_step": 0,  # optimizer steps already done in that epoch
            "step": 0,  # optimizer steps done in the whole run
            "epoch_sums": [0.0, 0.0, 0.0],  # loss x images, correct, images of the epoch so far (all ranks)
            "epoch_seconds": 0.0,
            "train_seconds": 0.0,
            "best_val_acc": -1.0,
            "best_epoch": 0,
            "stale_epochs": 0,
            "scaler": None,
            "version": __version__,
        }

    def _resume_dir(self) -> Path | None:
        resume = self.cfg.resume
        if resume is None:
            return None
        if resume == "auto":
            try:
                return checkpoint.find_last(self.run_dir)
            except InputError:
                return None
        return checkpoint.find_last(resume)

    def _check_resumable(self, last: Path) -> None:
        for key, mine in (("model", self.cfg.model), ("model_kwargs", self.cfg.model_kwargs), ("global_batch", self.cfg.batch_size)):
            if self.state.get(key) != mine:
                raise InputError(
                    f"--resume {last}: the checkpoint has {key}={self.state.get(key)!r}, this run {mine!r}",
                    hint="resume with the same model and global batch, or start a new --out",
                )

    def _restore(self, last: Path) -> None:
        self.optimizer.load_state_dict(checkpoint.load_optimizer_state(last))
        if self.ema is not None and (last / checkpoint.EMA_DIR).is_dir():
            self.ema.module.load_state_dict(load_file(str(last / checkpoint.EMA_DIR / "model.safetensors")))
        if self.state["scaler"] and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(self.state["scaler"])

    def _save_weights(self, model: torch.nn.Module, directory: Path, extra: dict[str, Any] | None = None) -> None:
        save_model(
            directory, model, name=self.cfg.model, kwargs=self.cfg.model_kwargs, num_classes=self.num_classes,
            class_names=self.class_names, extra_meta=extra,
        )  # fmt: skip

    def _save_last(self) -> None:
        if not self.acc.is_main_process:
            return
        if self.acc.scaler is not None:
            self.state["scaler"] = self.acc.scaler.state_dict()
        ema_save = (lambda d: self._save_weights(self.ema.module, d)) if self.ema else None
        checkpoint.save_last(self.run_dir, lambda d: self._save_weights(self.raw_model, d), self.optimizer, ema_save, self.state)

    # --- the loop --------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg, acc = self.cfg, self.acc
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, self.run_dir / "config.yaml")
            self._truncate_metrics(self.state["epoch"])
        acc.wait_for_everyone()
        self._announce()
        run_start = time.perf_counter()
        preempted = None
        with PreemptionWatch() as watch:
            while self.state["epoch"] < cfg.epochs:
                preempted = self._train_epoch(watch)
                if preempted:
                    break
                if self._end_epoch(run_start):
                    break
        if preempted:
            self._save_last()
            acc.wait_for_everyone()
            self.progress.log(
                f"{preempted}: saved {self.run_dir / 'last'} at step {self.state['step']}; resume with the same "
                f"command plus `--resume {self.run_dir / 'last'}` (or `--resume auto`)"
            )
        else:
            self._finish()
        return RunResult(
            self.run_dir, cfg.model, self.state["best_val_acc"], self.state["best_epoch"], self.state["epoch"],
            self.state["train_seconds"], self._images_per_s(), preempted,
        )  # fmt: skip

    def _announce(self) -> None:
        lay = self.layout
        where = f"resuming {self.resumed_from} at epoch {self.state['epoch'] + 1}, step {self.state['step']}; " if self.resumed_from else ""
        self.progress.log(
            f"[bold]{self.cfg.model}[/]: {where}{len(self.batches):,} train / {len(self.val_labels):,} val images, "
            f"{self.num_classes} classes, {self.params:,} params; global batch {lay.global_batch} = "
            f"{lay.per_device} per device x {lay.grad_accum} accumulation x {lay.world_size} process(es); "
            f"precision {self.acc.mixed_precision} on {self.acc.device} ({this_machine_precision(self.cfg.precision).reason})"
        )

    def _train_epoch(self, watch: PreemptionWatch) -> str | None:
        cfg, acc, state = self.cfg, self.acc, self.state
        epoch, steps = state["epoch"], self.batches.steps_per_epoch
        sums = torch.tensor(state["epoch_sums"], dtype=torch.float64, device=acc.device) / acc.num_processes
        first_bad = torch.full((), -1, dtype=torch.int64, device=acc.device)  # first non-finite step, -1 = none
        step_t = torch.tensor(state["step"], device=acc.device)
        self.progress.start_epoch(f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}", steps, state["epoch_step"])
        self.model.train()
        t0 = time.perf_counter() - state["epoch_seconds"]
        for micro, (x, y) in enumerate(self.batches.epoch(epoch, state["epoch_step"])):
            if micro % cfg.grad_accum == 0:
                seed_step(cfg.seed, state["step"], acc.process_index)
            loss, logits = micro_step(acc, self.model, self.optimizer, x, y, cfg, state["step"], self.total_steps)
            sums += torch.stack([loss.double() * len(y), (logits.argmax(1) == y).sum().double(), torch.tensor(len(y), dtype=torch.float64, device=acc.device)])
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step_t, first_bad)
            if not acc.sync_gradients:
                continue
            state["step"] += 1
            state["epoch_step"] += 1
            step_t += 1
            if self.ema is not None:
                self.ema.update(self.raw_model, state["step"])
            if state["epoch_step"] % REFRESH_EVERY == 0 or state["epoch_step"] == steps:
                self._check_finite(first_bad)
                seen = float(sums[2])
                self.progress.update(state["epoch_step"], float(sums[0]) / seen, float(sums[1]) / seen, seen * acc.num_processes / (time.perf_counter() - t0))
            if watch.requested(acc, state["step"]):
                self._check_finite(first_bad)
                state["epoch_sums"] = acc.reduce(sums.clone(), reduction="sum").tolist()
                state["epoch_seconds"] = time.perf_counter() - t0
                return watch.signal_name or "preemption signal (on another rank)"
        self._check_finite(first_bad)
        state["epoch_sums"] = acc.reduce(sums, reduction="sum").tolist()
        state["epoch_seconds"] = time.perf_counter() - t0
        return None

    def _check_finite(self, first_bad: torch.Tensor) -> None:
        bad = int(first_bad)
        if bad >= 0:
            raise FashiondistError(
                f"{self.cfg.model}: non-finite loss at optimizer step {bad + 1} (epoch {self.state['epoch'] + 1}); "
                f"stopped without saving, the last good checkpoint is {self.run_dir / 'last'}",
                hint="lower --lr, add --set grad_clip=1.0, or use --precision bf16 instead of fp16",
            )

    def _eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.raw_model

    def _end_epoch(self, run_start: float) -> bool:
        """Evaluate, log, checkpoint; return True when early stopping ends the run."""
        cfg, acc, state = self.cfg, self.acc, self.state
        t_eval = time.perf_counter()
        result = evaluate(acc, self._eval_model(), self.val_images, self.val_labels, cfg.eval_batch_size, cfg.tta)
        eval_seconds = time.perf_counter() - t_eval
        epoch = state["epoch"] + 1  # 1-based from here on, as users count
        loss_sum, correct, seen = state["epoch_sums"]
        state["train_seconds"] += state["epoch_seconds"]
        record = {
            "epoch": epoch,
            "step": state["step"],
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "val_loss": result.loss,
            "val_acc": result.accuracy,
            "val_count": result.count,
            "lr": lr_at(max(state["step"] - 1, 0), self.total_steps, cfg.lr, cfg.warmup_fraction, cfg.schedule),
            "images_per_s": seen / state["epoch_seconds"],
            "epoch_seconds": state["epoch_seconds"],
            "eval_seconds": eval_seconds,
            "train_seconds": state["train_seconds"],
            "elapsed_seconds": time.perf_counter() - run_start,
            "time": time.time(),
        }
        decision = [None]
        if acc.is_main_process:  # the main process decides; every rank follows
            improved = result.accuracy > state["best_val_acc"]
            stale = 0 if improved else state["stale_epochs"] + 1
            decision = [{"improved": improved, "stale": stale, "stop": bool(cfg.early_stop and stale >= cfg.early_stop)}]
        decision = broadcast_object_list(decision)[0]
        if decision["improved"]:
            state["best_val_acc"], state["best_epoch"] = result.accuracy, epoch
            self.best_weights = {k: v.detach().clone() for k, v in self._eval_model().state_dict().items()}
        state.update(epoch=epoch, epoch_step=0, epoch_sums=[0.0, 0.0, 0.0], epoch_seconds=0.0, stale_epochs=decision["stale"])
        if acc.is_main_process:
            with open(self.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if decision["improved"]:
                self._save_best(result, epoch)
            acc.log({k: v for k, v in record.items() if k != "time"}, step=epoch)
        self._save_last()
        acc.wait_for_everyone()
        mark = " *" if decision["improved"] else ""
        self.progress.log(
            f"{cfg.model} epoch {epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f} | "
            f"val loss {result.loss:.4f} acc {result.accuracy:.4f}{mark} | {record['images_per_s']:,.0f} img/s, "
            f"{record['epoch_seconds']:.1f}s"
        )
        if decision["stop"]:
            self.progress.log(f"{cfg.model}: early stop, no better validation accuracy for {cfg.early_stop} epochs")
        return decision["stop"]

    def _save_best(self, result: EvalResult, epoch: int) -> None:
        extra = {
            "metric": {"val_acc": result.accuracy, "val_loss": result.loss},
            "epoch": epoch,
            "tta": self.cfg.tta.value,
            "ema": self.ema is not None,
        }
        with checkpoint.atomic_dir(self.run_dir / "best") as tmp:
            self._save_weights(self._eval_model(), tmp, extra)

    def _truncate_metrics(self, epochs_done: int) -> None:
        """On resume, drop metric lines past the checkpoint (a run killed after logging but before saving)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= epochs_done]
        with atomic_write(path) as fh:
            fh.write("".join(line + "\n" for line in keep).encode())

    def _images_per_s(self) -> float:
        done = self.state["step"] * self.cfg.batch_size
        return done / self.state["train_seconds"] if self.state["train_seconds"] > 0 else 0.0

    def _finish(self) -> None:
        """Predict the validation split with the best weights and summarise the run."""
        acc = self.acc
        in_sync = self._ranks_in_sync()  # the final weights, before the best ones replace them
        best = self._eval_model()
        best.load_state_dict(self.best_weights)
        result = evaluate(acc, best, self.val_images, self.val_labels, self.cfg.eval_batch_size, self.cfg.tta)
        if not in_sync:
            self.progress.log(f"[red]{self.cfg.model}: the ranks' final weights differ; DDP did not keep them in sync")
        if acc.is_main_process:
            save_predictions(self.run_dir, result.labels, result.probs)
            summary = {
                "model": self.cfg.model,
                "model_kwargs": self.cfg.model_kwargs,
                "params": self.params,
                "macs": self.macs,
                "train_seconds": self.state["train_seconds"],
                "images_per_s": self._images_per_s(),
                "best_val_acc": self.state["best_val_acc"],
                "best_epoch": self.state["best_epoch"],
                "epochs": self.state["epoch"],
                "num_classes": self.num_classes,
                "class_names": self.class_names,
                "world_size": acc.num_processes,
                "precision": self.acc.mixed_precision,
                "precision_reason": this_machine_precision(self.cfg.precision).reason,
                "tta": self.cfg.tta.value,
                "global_batch": self.cfg.batch_size,
                "val_count": result.count,
                "ranks_in_sync": in_sync,
                "version": __version__,
            }
            checkpoint.write_json(self.run_dir / "summary.json", summary)
        acc.wait_for_everyone()

    def _ranks_in_sync(self) -> bool:
        """DDP sanity check: every rank ends with bitwise the same weights (compared by two checksums)."""
        # Parameters only: BatchNorm running statistics are per rank by design (each rank updates them from
        # its own last batch; DDP re-broadcasts rank 0's at the next forward).
        tensors = [p.detach().double().flatten() for p in self.raw_model.parameters()]
        flat = torch.cat(tensors)
        weights = torch.sin(torch.arange(len(flat), device=flat.device, dtype=torch.float64))
        sums = torch.stack([flat.sum(), (flat * weights).sum()])[None]  # [1, 2]
        gathered = self.acc.gather(sums)  # [world, 2]
        return bool((gathered == gathered[0]).all())
