"""The engine's set-up and its optimizer step, the one copy that `Trainer` and `fashiondist bench train` run.

`prepare_training` builds what one process trains with: device-resident batches, the registry's model (in
channels_last when the config asks; with SyncBatchNorm under DDP when it asks `sync_bn`), the optimizer,
all passed through `accelerator.prepare`. `PreparedTraining.step` is one optimizer step: seed dropout per
micro-batch, run the accumulation window's micro-batches under `accelerator.accumulate`, set the learning
rate, clip, step, add to the running tally, update the EMA; with `sam`, each micro-batch's gradient is taken
at its sharpness-aware ascent (engine.sam).
Under fp16 the loss scaler may skip the step (inf/NaN gradients): then the step count, and with it the
learning rate, stays, and the EMA is not updated; `step` says whether the optimizer stepped.
The trainer wraps it with what a run needs around it (progress bar, preemption, non-finite check,
evaluation, checkpoints); the benchmark times it as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from fashiondist.config import Optimizer, TrainConfig
from fashiondist.engine.allocator import keep_freed_memory
from fashiondist.engine.batches import BatchLayout, TrainBatches
from fashiondist.engine.batchnorm import convert_sync_batchnorm
from fashiondist.engine.distill import add_distillation, at_temperature, split_targets
from fashiondist.engine.ema import Ema
from fashiondist.engine.mixing import MixSettings, hard_labels
from fashiondist.engine.sam import SharpnessAscent
from fashiondist.engine.schedule import lr_at
from fashiondist.engine.switches import describe_speed_switches
from fashiondist.models.registry import create_model

# Dropout seeds mix (run seed, optimizer step, micro-batch slot) into one integer; the strides keep them apart
# (up to 4096 slots, world size x accumulation, per global batch).
_STEP_SEED_STRIDE = 1_000_003
_SLOTS = 4096


def seed_micro_batch(seed: int, step: int, slot: int, device: torch.device) -> None:
    """Seed dropout for micro-batch `slot` of optimizer step `step` (its place in the global batch, which
    `TrainBatches` splits as [grad_accum, world, per_device]: slot = micro x world + rank).

    The masks depend on which images are drawn, not on which process draws them: ranks draw different masks
    (slot differs), a resumed run draws the same ones, and any layout with the same per-device batch (2
    processes x 1 accumulation, 1 x 2) draws the same masks for the same images, so it trains the same model
    up to floating-point summation order. A layout with another per-device batch draws other masks (and
    BatchNorm normalises over other batches): the same training distribution, not the same trajectory.
    """
    value = (seed * _STEP_SEED_STRIDE + step) * _SLOTS + slot
    if device.type == "cpu":
        # The CPU generator alone, the one CPU dropout draws from: torch.manual_seed also queues a seeding of
        # every CUDA device in a CUDA build of torch (one more closure per call while CUDA is not initialised)
        # and costs 130 us a call here against 1.4 us (~1% of a 14 ms cnn-dropout step).
        torch.default_generator.manual_seed(value)
    else:
        torch.manual_seed(value)


def build_optimizer(
    cfg: TrainConfig, model: torch.nn.Module, loss_scaled: bool = False
) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and kernels only; biases and normalisation scales are left alone.

    The fused implementations where the parameters live on a CPU or a CUDA device (torch's default on the CPU
    is its per-parameter loop): one kernel per parameter for the whole update, the same update up to rounding.
    On 2 cores of an Intel Xeon, one step of cnn-dropout's Adam took 268 us against 658 us, convnet's
    SGD-Nesterov 217 us against 754 us (3-5% of a training step). Not under fp16 loss scaling
    (`loss_scaled`): a fused optimizer skips an overflowing step inside its kernel, and accelerate, which
    tells a skipped step by whether the optimizer's step was called, would count it as taken.
    """
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    devices_fuse = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    fused = {"fused": True} if devices_fuse and not loss_scaled else {}
    if cfg.optimizer is Optimizer.SGD:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, **fused)
    if cfg.optimizer is Optimizer.ADAM:
        return torch.optim.Adam(groups, lr=cfg.lr, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fused)


class TrainTally:
    """What the steps add up on the device, read only when someone asks (no host sync per step).

    `sums`: this rank's loss x images, correct predictions and images (float64 [3]); `first_bad`: the first
    optimizer step (0-based) whose loss was not finite, -1 while there is none. Each micro-batch only leaves
    its loss and its count of correct predictions on the device (4 small ops); reading either property folds
    what is pending into them in one go. Folding at every micro-batch took ~14 small ops, ~0.1 ms of a ~12 ms
    bf16 cnn-dropout step on 2 cores.
    """

    _FOLD_AT = 256  # pending micro-batches folded without being asked, so a tally nobody reads stays small

    def __init__(self, device: torch.device, step: int, sums: Sequence[float] = (0.0, 0.0, 0.0)):
        self._sums = torch.tensor(sums, dtype=torch.float64, device=device)
        self._first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self._step = step  # the optimizer step in progress
        self._losses: list[torch.Tensor] = []  # per pending micro-batch: mean loss (0-d)
        self._correct: list[torch.Tensor] = []  # correct predictions (0-d)
        self._sizes: list[int] = []  # images
        self._steps: list[int] = []  # optimizer step

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one micro-batch: its mean loss, its logits [b, K] and labels [b] (or soft targets: `mixing`)."""
        labels = hard_labels(labels)
        self._losses.append(loss.detach().reshape(()))
        self._correct.append((logits.argmax(1) == labels).sum())
        self._sizes.append(len(labels))
        self._steps.append(self._step)
        if len(self._losses) >= self._FOLD_AT:
            self._fold()

    def next_step(self) -> None:
        self._step += 1

    @property
    def sums(self) -> torch.Tensor:
        self._fold()
        return self._sums

    @property
    def first_bad(self) -> torch.Tensor:
        self._fold()
        return self._first_bad

    def _fold(self) -> None:
        if not self._losses:
            return
        device = self._sums.device
        losses = torch.stack(self._losses).double()  # [k]
        sizes = torch.tensor(self._sizes, dtype=torch.float64, device=device)  # [k]
        correct = torch.stack(self._correct).sum().double()
        self._sums += torch.stack([(losses * sizes).sum(), correct, sizes.sum()])
        bad = ~torch.isfinite(losses)  # [k]
        steps = torch.tensor(self._steps, dtype=torch.int64, device=device)  # [k]
        first = torch.where(bad, steps, torch.iinfo(torch.int64).max).min()
        self._first_bad = torch.where((self._first_bad < 0) & bad.any(), first, self._first_bad)
        self._losses, self._correct, self._sizes, self._steps = [], [], [], []


@dataclass
class PreparedTraining:
    """One process's model, optimizer (both prepared by accelerate), batches and EMA, ready to step."""

    cfg: TrainConfig
    acc: Accelerator
    model: torch.nn.Module  # as prepared: DDP-wrapped under several processes
    optimizer: torch.optim.Optimizer
    batches: TrainBatches
    ema: Ema | None
    switches: str = ""  # the speed switches in effect (engine.switches), for the run's first log line
    teacher: torch.nn.Module | None = None  # predicts each batch (`distill_augmented`; engine.distill)
    sam: SharpnessAscent | None = None  # sharpness-aware steps (engine.sam)

    @property
    def raw_model(self) -> torch.nn.Module:
        """The module itself: without DDP and without torch.compile's wrapper (what is saved and evaluated)."""
        return self.acc.unwrap_model(self.model, keep_torch_compile=False)

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the whole run: the learning-rate schedule's length."""
        return self.batches.steps_per_epoch * self.cfg.epochs

    def step(
        self, micro_batches: Iterator[tuple[torch.Tensor, torch.Tensor]], step: int, tally: TrainTally
    ) -> bool:
        """Optimizer step `step` (0-based, counted over the run) on the next `grad_accum` micro-batches.

        Every window starts on an accumulation boundary (the set-up zeroes accelerate's micro-step counter and
        `TrainBatches` never yields a partial window), so the last micro-batch is the one that steps.
        Returns False when the fp16 loss scaler skipped it (inf/NaN gradients; the scale was lowered): the
        weights are unchanged, the EMA is not updated, and the caller keeps `step` for the next window.
        """
        cfg, acc = self.cfg, self.acc
        for micro in range(cfg.grad_accum):
            seed_micro_batch(cfg.seed, step, micro * acc.num_processes + acc.process_index, acc.device)
            x, y = next(micro_batches)
            loss, logits = self._micro_step(x, y, step)
            tally.add(loss, logits, y)
        if self.optimizer.step_was_skipped:  # a Python bool: the scaler has synchronised already
            return False
        tally.next_step()
        if self.ema is not None:
            self.ema.update(self.raw_model, step + 1)
        return True

    def _micro_step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One micro-batch under `accumulate`: forward, backward; on the window's last micro-batch set the lr of
        optimizer step `step`, clip and step (accelerate's optimizer skips the others). Returns (loss, logits)."""
        cfg, acc, optimizer = self.cfg, self.acc, self.optimizer
        with acc.accumulate(self.model):
            targets, teacher = split_targets(y)
            if self.teacher is not None:  # the batch as the student sees it
                with torch.no_grad(), acc.autocast():
                    teacher = at_temperature(self.teacher(x), cfg.distill_temperature)

            def loss_of(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
                loss, logits = model(x, targets=targets, label_smoothing=cfg.label_smoothing)
                if teacher is not None:
                    loss = add_distillation(
                        loss, logits, teacher, cfg.distill_temperature, cfg.distill_weight
                    )
                return loss, logits

            sam = self.sam if self.sam is not None and self.sam.applies(step) else None
            if sam is not None:  # to w + e, BatchNorm's statistics taken at w
                with acc.autocast():
                    sam.ascend(lambda model: loss_of(model)[0])
            with sam.descent() if sam is not None else contextlib.nullcontext():
                loss, logits = loss_of(self.model)
            acc.backward(loss)
            if sam is not None:
                sam.restore()
            if acc.sync_gradients:
                lr = lr_at(step, self.total_steps, cfg.lr, cfg.warmup_fraction, cfg.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if cfg.grad_clip > 0:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach(), logits


def prepare_training(
    cfg: TrainConfig,
    acc: Accelerator,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    weights: dict[str, torch.Tensor] | None = None,
    teacher: torch.Tensor | torch.nn.Module | None = None,
) -> PreparedTraining:
    """Set up one process to train `cfg.model` on uint8 `images` [N, H, W] with int64 `labels` [N].

    `weights` (a state dict, e.g. a resumed `last/`) replace the seeded initial ones before the model moves to
    the device, so DDP's start-up broadcast and the EMA's first copy both see them. `teacher`: float32 [N, K]
    probabilities to distil (`engine.distill.teacher_targets`), one row per training image, or the teacher
    itself (`engine.distill.augmented_teacher`), which then predicts every micro-batch.
    """
    live_teacher = teacher if isinstance(teacher, torch.nn.Module) else None
    if live_teacher is not None:
        teacher = None  # the batches carry the labels alone
    layout = BatchLayout.of(cfg.batch_size, cfg.grad_accum, acc.num_processes)
    mixing = MixSettings(cfg.mixup, cfg.cutmix, cfg.mix_prob, cfg.mix_switch_prob)
    batches = TrainBatches(
        images, labels, layout, acc.process_index, acc.device, cfg.seed, cfg.augment, cfg.shift, cfg.erase,
        mixing, num_classes, teacher,
    )  # fmt: skip
    set_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = create_model(cfg.model, num_classes, **cfg.model_kwargs)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if weights is not None:
        model.load_state_dict(weights)
    if cfg.sync_bn and acc.num_processes > 1:  # same keys and tensors: saved and exported as plain BatchNorm
        model = convert_sync_batchnorm(model, acc.device)
    model = model.to(acc.device)
    loss_scaled = acc.mixed_precision == "fp16"  # accelerate's GradScaler
    model, optimizer = acc.prepare(model, build_optimizer(cfg, model, loss_scaled))
    acc.gradient_accumulation_steps = cfg.grad_accum
    acc.step = 0  # accelerate's micro-step counter: the first window starts on a boundary
    switches = f"{describe_speed_switches(acc)}; {keep_freed_memory()}"  # before the first step allocates
    training = PreparedTraining(cfg, acc, model, optimizer, batches, None, switches, live_teacher)
    if cfg.ema > 0:
        training.ema = Ema(training.raw_model, cfg.ema)
    if cfg.sam > 0:
        first_step = round(cfg.sam_start * training.total_steps)
        training.sam = SharpnessAscent(training.raw_model, cfg.sam, first_step)
    return training
