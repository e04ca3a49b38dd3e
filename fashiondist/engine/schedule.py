"""The learning rate as a pure function of the optimizer step, so resuming needs only the step (nanoGPT's
`get_lr`). Nothing here steps per process or keeps state."""

from __future__ import annotations

import math

from fashiondist.config import Schedule


def lr_at(step: int, total_steps: int, peak: float, warmup_fraction: float, schedule: Schedule) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`.

    All schedules warm up linearly from peak/warmup_steps to `peak` over the first `warmup_fraction` of the
    steps; then `linear` decays linearly to 0, `cosine` follows a half cosine to 0, `constant` stays flat.
    """
    warmup = int(round(warmup_fraction * total_steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule is Schedule.CONSTANT:
        return peak
    progress = (step - warmup) / max(1, total_steps - warmup)  # 0 at the peak, 1 after the last step
    progress = min(max(progress, 0.0), 1.0)
    if schedule is Schedule.LINEAR:
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
