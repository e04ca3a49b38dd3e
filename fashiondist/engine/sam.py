"""Sharpness-aware minimisation (Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently Improving
Generalization"): each micro-batch's gradient is taken at the worst nearby weights instead of the weights.

    fashiondist train --config launch/experiments/cpu-best.yaml --set sam=0.05 --epochs 30

For a micro-batch with loss L(w): g = dL/dw at w, e = rho x g / ||g|| (one step of length rho uphill), then
the gradient that trains is dL/dw at w + e, and the weights go back to w before the optimizer steps. It costs
a second forward and backward per micro-batch (about 2x a step), which is why `sam_start` can keep it to the
run's last part (Zhou et al., "Sharpness-Aware Minimization Efficiently Selects Flatter Minima Late in
Training": SAM in the last few epochs generalises about as well as SAM throughout).

The ascent's gradient is each process's own micro-batch's, never all-reduced (the paper's "m-sharpness", as
its own multi-device implementation did; smaller m generalises better), taken on the plain module outside DDP;
the descent's gradient is the usual one, accumulated and all-reduced as configured. BatchNorm's running
statistics are updated by the ascent's forward alone, so they follow the weights w, not w + e. An ascent whose
gradient is not finite (fp16 overflow) perturbs nothing, and the step is then a plain one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.nn.modules.batchnorm import _BatchNorm

_EPS = 1e-12


def batchnorm_layers(model: torch.nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def frozen_batchnorm_statistics(layers: list[_BatchNorm]) -> Iterator[None]:
    """BatchNorm still normalises by the batch's statistics, but its running ones stay as they are."""
    saved = [
        (m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
        for m in layers
    ]
    for m in layers:
        m.momentum = 0.0  # running = (1 - 0) x running + 0 x batch
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


class SharpnessAscent:
    """Moves the weights to w + e for one micro-batch's descent and back to w before the optimizer steps, from
    optimizer step `first_step` on."""

    def __init__(self, model: torch.nn.Module, rho: float, first_step: int = 0):
        self.model = model  # the plain module: its parameters are the ones DDP and the optimizer hold
        self.rho = rho
        self.first_step = first_step
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.batchnorms = batchnorm_layers(model)  # once, not per step
        self._saved: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def applies(self, step: int) -> bool:
        return step >= self.first_step

    def descent(self) -> contextlib.AbstractContextManager[None]:
        """Around the descent's forward: BatchNorm's running statistics stay those the ascent took at w."""
        return frozen_batchnorm_statistics(self.batchnorms)

    def ascend(self, loss_of: Callable[[torch.nn.Module], torch.Tensor]) -> None:
        """Take the gradient of `loss_of(model)` (the micro-batch's loss at w) and move the weights to w + e."""
        loss = loss_of(self.model)  # BatchNorm's running statistics follow w here, and only here
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        params = [p for p, g in zip(self.params, grads, strict=True) if g is not None]
        grads = [g.float() for g in grads if g is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        # a non-finite gradient (fp16 overflow) moves nothing; no host sync either way
        finite = torch.isfinite(norm)
        scale = self.rho / (norm + _EPS)
        with torch.no_grad():
            self._saved = (params, [p.detach().clone() for p in params])
            torch._foreach_add_(params, [torch.where(finite, g * scale, 0.0) for g in grads])

    def restore(self) -> None:
        """Back to w exactly (after the descent's backward, before the optimizer steps): a copy, not w + e - e,
        whose rounding would differ between DDP ranks, whose e differ."""
        if self._saved is None:
            return
        params, saved = self._saved
        with torch.no_grad():
            torch._foreach_copy_(params, saved)
        self._saved = None
