"""Device-resident batches and on-device augmentation (airbench style).

Small datasets live on the device: the uint8 images move there once (47 MB for all of Fashion-MNIST), every
epoch draws one permutation from (seed, epoch), and a batch is a slice of it. Augmentation parameters
(flip, translation, erasing box) are drawn per *sample* from the same (seed, epoch) generator, for the whole
epoch at once, and applied to whole batches with tensor ops, so the hot loop has no per-sample Python.

Because the permutation and the augmentation depend only on (seed, epoch) and a sample's position in the
epoch, every rank draws the same plan and takes its own shard of each global batch: a 2-rank run sees
exactly the images, in exactly the augmented form, that a 1-process run at the same global batch sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F

from fashiondist.constants import IMAGE_HEIGHT, IMAGE_WIDTH
from fashiondist.engine.mixing import MixSettings, apply_mix, draw_mix_plan, mix_targets
from fashiondist.errors import InputError
from fashiondist.models import kernels

# A run's seed and an epoch index mix into one generator seed; the multiplier keeps (seed, epoch) pairs apart.
_EPOCH_STRIDE = 1_000_003


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * _EPOCH_STRIDE + epoch)


@dataclass(frozen=True)
class AugmentPlan:
    """Per-sample augmentation parameters for one epoch, indexed by position in the epoch's permutation."""

    flip: torch.Tensor  # bool [N]
    dy: torch.Tensor  # int64 [N], translation in pixels, in [-shift, shift]
    dx: torch.Tensor  # int64 [N]
    # int64 [N, 4]: y0, x0, y1, x1; an empty box (y0 == y1) erases nothing. None: no erasing this run (the
    # recipes' default), and apply_augment skips the mask (a quarter of its time, 0 bytes changed)
    erase_box: torch.Tensor | None

    def take(self, positions: slice | torch.Tensor) -> AugmentPlan:
        box = None if self.erase_box is None else self.erase_box[positions]
        return AugmentPlan(self.flip[positions], self.dy[positions], self.dx[positions], box)

    def to(self, device: torch.device) -> AugmentPlan:
        flip, dy, dx = (t.to(device, non_blocking=True) for t in (self.flip, self.dy, self.dx))
        box = None if self.erase_box is None else self.erase_box.to(device, non_blocking=True)
        return AugmentPlan(flip, dy, dx, box)


def draw_augment_plan(
    n: int, generator: torch.Generator, flip: bool, shift: int, erase: float
) -> AugmentPlan:
    """Draw every sample's augmentation for one epoch on the CPU (cheap: a few int tensors of length n)."""
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    if shift > 0:
        dy = torch.randint(-shift, shift + 1, (n,), generator=generator)
        dx = torch.randint(-shift, shift + 1, (n,), generator=generator)
    else:
        dy = dx = torch.zeros(n, dtype=torch.int64)
    box = None
    if erase > 0:
        # Random erasing: a box of 1/16 to 1/4 of the image side squared, anywhere, with probability `erase`.
        apply = torch.rand(n, generator=generator) < erase
        h = torch.randint(IMAGE_HEIGHT // 4, IMAGE_HEIGHT // 2 + 1, (n,), generator=generator)
        w = torch.randint(IMAGE_WIDTH // 4, IMAGE_WIDTH // 2 + 1, (n,), generator=generator)
        y0 = (torch.rand(n, generator=generator) * (IMAGE_HEIGHT - h + 1)).long()
        x0 = (torch.rand(n, generator=generator) * (IMAGE_WIDTH - w + 1)).long()
        box = torch.stack([y0, x0, y0 + h * apply, x0 + w * apply], dim=1)
    return AugmentPlan(flips, dy, dx, box)


def apply_augment(images: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
    """Augment a uint8 batch [B, 1, H, W] on its device with two gathers: flip, translate (zero fill), erase.

    A translation reads outside the image; such a source row or column is sent to the zero row and column
    that one padding adds, so the gathers themselves fill with zeros and no mask of the inside is built
    (0.51 against 0.79 ms for a mask over one 4-index gather, batch 128, 2 cores of an Intel Xeon; the same
    bytes out).
    """
    b, _, h, w = images.shape
    device = images.device
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    src_rows = rows[None, :] - plan.dy[:, None]  # [B, H]: the source row of every output row
    src_cols = cols[None, :] - plan.dx[:, None]  # [B, W]
    src_cols = torch.where(plan.flip[:, None], w - 1 - src_cols, src_cols)
    src_rows = torch.where((src_rows >= 0) & (src_rows < h), src_rows, h)  # outside: the zero row at h
    src_cols = torch.where((src_cols >= 0) & (src_cols < w), src_cols, w)  # outside: the zero column at w
    padded = F.pad(images[:, 0], (0, 1, 0, 1))  # [B, H + 1, W + 1], zero last row and column
    out = torch.gather(padded, 1, src_rows[:, :, None].expand(b, h, w + 1))  # [B, H, W + 1]
    out = torch.gather(out, 2, src_cols[:, None, :].expand(b, h, w))  # [B, H, W]
    if plan.erase_box is None:
        return out[:, None]  # [B, 1, H, W]
    y0, x0, y1, x1 = plan.erase_box.unbind(1)
    erased = ((rows[None, :] >= y0[:, None]) & (rows[None, :] < y1[:, None]))[:, :, None] & (
        (cols[None, :] >= x0[:, None]) & (cols[None, :] < x1[:, None])
    )[:, None, :]
    return out.masked_fill_(erased, 0)[:, None]  # [B, 1, H, W]


def augment_on_cpu(
    kernel: ModuleType, images: torch.Tensor, index: torch.Tensor, plan: AugmentPlan
) -> torch.Tensor:
    """`apply_augment(images[index], plan)` by the compiled kernel (`models/_kernels.c` `augment`), the same
    bytes in one pass over the batch: 91 us for 128 images of 60,000, the plan's slices included, against
    322 us for the index_select and the gathers (2 cores of an Intel Xeon). CPU tensors only; images uint8
    [N, 1, H, W] contiguous."""
    n, _, h, w = images.shape
    index = index.contiguous()
    flip, dy, dx = (t.contiguous() for t in (plan.flip, plan.dy, plan.dx))
    box = None if plan.erase_box is None else plan.erase_box.contiguous()
    out = torch.empty((len(index), 1, h, w), dtype=torch.uint8)
    kernel.augment(
        images.data_ptr(), n, index.data_ptr(), flip.view(torch.uint8).data_ptr(), dy.data_ptr(), dx.data_ptr(),
        0 if box is None else box.data_ptr(), out.data_ptr(), len(index), h, w,
    )  # fmt: skip
    return out


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch splits: global = per_device x grad_accum x world_size."""

    global_batch: int
    per_device: int
    grad_accum: int
    world_size: int

    @classmethod
    def of(cls, global_batch: int, grad_accum: int, world_size: int) -> BatchLayout:
        per_step = grad_accum * world_size
        if global_batch % per_step:
            raise InputError(
                f"--batch-size {global_batch} does not divide into --grad-accum {grad_accum} x "
                f"{world_size} process(es)",
                hint=f"use a multiple of {per_step}",
            )
        return cls(global_batch, global_batch // per_step, grad_accum, world_size)


class TrainBatches:
    """One rank's training micro-batches: uint8 images live on `device`, batches are shards of global batches.

    Each epoch keeps floor(N / global_batch) full global batches and drops the rest of the permutation, so
    every optimizer step sees exactly `global_batch` images and no accumulation window is ever partial. The
    dropped tail is different every epoch (a fresh permutation), so no image is left out for good.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        layout: BatchLayout,
        rank: int,
        device: torch.device,
        seed: int,
        augment: bool,
        shift: int,
        erase: float,
        mixing: MixSettings | None = None,
        num_classes: int | None = None,
        teacher: torch.Tensor | None = None,
    ):
        """`mixing`: mixup/cutmix (`engine.mixing`); `teacher`: float32 [N, K] targets distilled beside the
        labels (`engine.distill`). Either one makes the batches' targets soft, over `num_classes` classes."""
        if len(images) < layout.global_batch:
            raise InputError(
                f"--batch-size {layout.global_batch} is larger than the {len(images)} training images",
                hint="use a smaller --batch-size or more data",
            )
        self.images = torch.tensor(images, device=device).unsqueeze(1)  # [N, 1, H, W] uint8, copied once
        self.labels = torch.as_tensor(labels, dtype=torch.int64, device=device)
        self.layout = layout
        self.rank = rank
        self.device = device
        self.seed = seed
        self.augment = augment
        self.shift = shift if augment else 0
        self.erase = erase if augment else 0.0
        self.mixing = mixing if mixing is not None and mixing.enabled else None
        self.num_classes = num_classes if num_classes is not None else int(labels.max()) + 1
        self.teacher = teacher.to(device) if teacher is not None else None
        # on the CPU, the compiled kernel gathers and augments a batch in one pass (`augment_on_cpu`)
        self._augment_kernel = kernels.compiled() if augment and self.images.device.type == "cpu" else None

    @property
    def num_images(self) -> int:
        """Training images on this process's device (all of them: each rank draws its share per step)."""
        return len(self.images)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch."""
        return len(self.images) // self.layout.global_batch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's (uint8 images [b,1,H,W], labels [b]) micro-batches, from optimizer step `start_step`."""
        gen = epoch_generator(self.seed, epoch)
        n = len(self.images)
        order = torch.randperm(n, generator=gen)
        plan = draw_augment_plan(n, gen, flip=self.augment, shift=self.shift, erase=self.erase)
        mix = draw_mix_plan(n, gen, self.mixing).to(self.device) if self.mixing is not None else None
        lay = self.layout
        order = order.to(self.device, non_blocking=True)
        plan = plan.to(self.device)
        for step in range(start_step, self.steps_per_epoch):
            for micro in range(lay.grad_accum):
                # Global batch `step` is positions [step*G, (step+1)*G); it splits as [grad_accum, world, per_device].
                start = step * lay.global_batch + (micro * lay.world_size + self.rank) * lay.per_device
                positions = slice(start, start + lay.per_device)
                index = order[positions]
                x = self._images(index, plan.take(positions) if self.augment else None)
                targets = self._targets(index)
                if mix is not None:
                    # the partner at its own position: its image, its augmentation, its targets
                    m = mix.take(positions)
                    partner = order[m.partner]
                    px = self._images(partner, plan.take(m.partner) if self.augment else None)
                    x = apply_mix(x, px, m)
                    targets = mix_targets(targets, self._targets(partner), m.lam)
                yield x, targets

    def _images(self, index: torch.Tensor, plan: AugmentPlan | None) -> torch.Tensor:
        """uint8 [b, 1, H, W]: the images at `index`, augmented by `plan` (None: as they are)."""
        if plan is None:
            # index_select copies whole rows: 13 us a batch of 128 against 92 us for images[index]
            return self.images.index_select(0, index)
        if self._augment_kernel is not None:
            return augment_on_cpu(self._augment_kernel, self.images, index, plan)
        return apply_augment(self.images.index_select(0, index), plan)

    def _targets(self, index: torch.Tensor) -> torch.Tensor:
        """Labels [b]; one-hot float32 [b, K] under mixing; [b, 2, K] (labels, teacher) with a teacher."""
        labels = self.labels.index_select(0, index)
        if self.mixing is None and self.teacher is None:
            return labels
        one_hot = torch.nn.functional.one_hot(labels, self.num_classes).float()  # [b, K]
        if self.teacher is None:
            return one_hot
        return torch.stack([one_hot, self.teacher[index]], dim=1)  # [b, 2, K]


def shard_for_eval(n: int, rank: int, world_size: int) -> tuple[torch.Tensor, int]:
    """Indices of rank's evaluation shard, padded so every rank holds the same count (gather needs it).

    Rank r takes the contiguous block [r*S, (r+1)*S) with S = ceil(n / world); positions past n repeat the last
    sample. Gathering the shards rank-major and keeping the first n entries gives every sample exactly once,
    in order, for any world size (what `gather_for_metrics` does for a prepared DataLoader).
    Returns (indices [S], number of real samples in this shard).
    """
    per_rank = -(-n // world_size)
    index = torch.arange(rank * per_rank, (rank + 1) * per_rank)
    real = int((index < n).sum())
    return index.clamp(max=n - 1), real
