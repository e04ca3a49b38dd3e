"""Mixup and cutmix on the device-resident batches, and the soft targets they (and distillation) train on.

timm's `Mixup` in its per-sample mode ("elem"): every sample of an epoch is, with probability `prob`, mixed
with a partner image, by mixup (a pixel-wise blend with weight lam ~ Beta(mixup, mixup)) or by cutmix (a box of
area (1 - lam) with lam ~ Beta(cutmix, cutmix) pasted from the partner, lam then corrected to the box's real
area after clipping to the image); when both are on, cutmix is chosen with probability `switch_prob`.
The target is lam x one_hot(label) + (1 - lam) x one_hot(partner label). Label smoothing is applied by the
loss to these soft targets (`F.cross_entropy(..., label_smoothing=e)` takes t -> (1 - e) t + e / K), which is
exactly timm's `mixup_target`: the mix of two smoothed one-hots.

Like the augmentation plan, the mixing plan (partners, lam, mode, box) is drawn per *position* in the epoch's
permutation from the (seed, epoch) generator, after the augmentation plan, and a partner is augmented with
its own position's plan. So every rank draws the same plan and a 2-rank run sees exactly the mixed images of
a 1-process run at the same global batch. With mixing off nothing is drawn, so runs without it keep their
random streams.

A batch's targets are int64 labels [b] (no mixing, no teacher), float32 soft targets [b, K] (mixing), or
float32 [b, 2, K] when a teacher's probabilities are distilled: row 0 the (mixed) true-label targets, row 1
the (mixed) teacher targets at the distillation temperature (`engine.distill`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fashiondist.constants import IMAGE_HEIGHT, IMAGE_WIDTH


@dataclass(frozen=True)
class MixSettings:
    """The config's mixing keys: Beta concentrations (0 = that kind off), per-sample probability, switch."""

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup > 0 or self.cutmix > 0)


@dataclass(frozen=True)
class MixPlan:
    """Per-position mixing parameters for one epoch, indexed like `AugmentPlan`."""

    partner: torch.Tensor  # int64 [N]: the position (in the epoch's permutation) of the partner image
    lam: torch.Tensor  # float32 [N]: the weight of the sample's own label in its target (1 = not mixed)
    cut: torch.Tensor  # bool [N]: cutmix (True) or mixup (False)
    box: torch.Tensor  # int64 [N, 4]: y0, x0, y1, x1 of the pasted box (cutmix only)

    def take(self, positions: slice) -> MixPlan:
        return MixPlan(self.partner[positions], self.lam[positions], self.cut[positions], self.box[positions])

    def to(self, device: torch.device) -> MixPlan:
        return MixPlan(
            *(t.to(device, non_blocking=True) for t in (self.partner, self.lam, self.cut, self.box))
        )


def _beta(n: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Beta(alpha, alpha) samples as the ratio of two Gamma draws (torch's Beta takes no generator)."""
    a = torch._standard_gamma(torch.full((n,), alpha, dtype=torch.float64), generator=generator)
    b = torch._standard_gamma(torch.full((n,), alpha, dtype=torch.float64), generator=generator)
    return a / (a + b)


def draw_mix_plan(n: int, generator: torch.Generator, settings: MixSettings) -> MixPlan:
    """Draw every position's mixing for one epoch on the CPU (cheap: a few tensors of length n)."""
    partner = torch.randperm(n, generator=generator)
    mixed = torch.rand(n, generator=generator) < settings.prob
    if settings.mixup > 0 and settings.cutmix > 0:
        cut = torch.rand(n, generator=generator) < settings.switch_prob
    else:
        cut = torch.full((n,), settings.cutmix > 0)
    lam_mix = (
        _beta(n, settings.mixup, generator) if settings.mixup > 0 else torch.ones(n, dtype=torch.float64)
    )
    lam_cut = (
        _beta(n, settings.cutmix, generator) if settings.cutmix > 0 else torch.ones(n, dtype=torch.float64)
    )
    # cutmix box (timm's rand_bbox): sides sqrt(1 - lam) of the image's, centred anywhere, clipped to the image
    ratio = (1.0 - lam_cut).sqrt()
    cut_h, cut_w = (IMAGE_HEIGHT * ratio).long(), (IMAGE_WIDTH * ratio).long()
    cy = torch.randint(0, IMAGE_HEIGHT, (n,), generator=generator)
    cx = torch.randint(0, IMAGE_WIDTH, (n,), generator=generator)
    y0, y1 = (cy - cut_h // 2).clamp(0, IMAGE_HEIGHT), (cy + cut_h // 2).clamp(0, IMAGE_HEIGHT)
    x0, x1 = (cx - cut_w // 2).clamp(0, IMAGE_WIDTH), (cx + cut_w // 2).clamp(0, IMAGE_WIDTH)
    box = torch.stack([y0, x0, y1, x1], dim=1)
    area = ((y1 - y0) * (x1 - x0)).double() / (IMAGE_HEIGHT * IMAGE_WIDTH)
    lam = torch.where(cut, 1.0 - area, lam_mix)  # cutmix: the share of the image the sample really keeps
    lam = torch.where(mixed, lam, torch.ones_like(lam))
    box = torch.where((mixed & cut)[:, None], box, torch.zeros_like(box))
    return MixPlan(partner, lam.float(), cut & mixed, box)


def apply_mix(images: torch.Tensor, partners: torch.Tensor, plan: MixPlan) -> torch.Tensor:
    """Mix augmented images [B, 1, H, W] (uint8) with their augmented partners: float32 [B, 1, H, W], 0..255."""
    _, _, h, w = images.shape
    device = images.device
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    y0, x0, y1, x1 = plan.box.unbind(1)
    in_box = ((rows[None, :] >= y0[:, None]) & (rows[None, :] < y1[:, None]))[:, :, None] & (
        (cols[None, :] >= x0[:, None]) & (cols[None, :] < x1[:, None])
    )[:, None, :]  # [B, H, W]
    # Weight of the sample's own pixel: cutmix 0 inside the box and 1 outside, mixup lam everywhere.
    own = torch.where(plan.cut[:, None, None], (~in_box).float(), plan.lam[:, None, None])[
        :, None
    ]  # [B,1,H,W]
    return own * images.float() + (1.0 - own) * partners.float()


def mix_targets(own: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """lam x own + (1 - lam) x partner for soft targets [B, ..., K] and lam [B]."""
    shape = (-1,) + (1,) * (own.ndim - 1)
    return lam.view(shape) * own + (1.0 - lam.view(shape)) * partner


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """The label a batch's targets count as for training accuracy: the labels themselves, or the largest
    share of the (mixed) true-label targets."""
    if targets.ndim == 1:
        return targets
    if targets.ndim == 3:
        targets = targets[:, 0]
    return targets.argmax(1)
