"""An exponential moving average of a model's weights, updated once per optimizer step."""

from __future__ import annotations

import copy

import torch


class Ema:
    """EMA of parameters and floating buffers (BatchNorm statistics), with timm's warmup of the decay.

    The effective decay is min(decay, (1 + updates) / (10 + updates)), so early averages are not dominated by
    the random initialisation. `updates` is the optimizer step count, which a resumed run restores.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def _pairs(self, model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        mine = [t for t in self.module.state_dict().values() if t.is_floating_point()]
        theirs = [t for t in model.state_dict().values() if t.is_floating_point()]
        return mine, theirs

    @torch.no_grad()
    def update(self, model: torch.nn.Module, updates: int) -> None:
        decay = min(self.decay, (1 + updates) / (10 + updates))
        mine, theirs = self._pairs(model)
        torch._foreach_lerp_(mine, theirs, 1.0 - decay)
        # Integer buffers (BatchNorm's num_batches_tracked) follow the live model.
        pairs = zip(self.module.state_dict().values(), model.state_dict().values(), strict=True)
        for mine_t, theirs_t in pairs:
            if not mine_t.is_floating_point():
                mine_t.copy_(theirs_t)
