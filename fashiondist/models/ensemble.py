"""An ensemble of trained models as one module: the mean of its members' probabilities, each member under
its own test-time policy (`tta_probs`) and its own preprocessing (normalisation lives in each model).

`forward` returns log(mean probability) as the ensemble's logits, so that `softmax(forward(x))` is the mean
probability again (the rows of a mean of softmax rows sum to 1) and everything built for one model works
unchanged on the ensemble: `tta_probs` / `ProbsHead` (the exported ONNX graph, whose `probs` output is then
the averaged probabilities), the engine's evaluation, the export's parity and accuracy checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fashiondist.config import Tta
from fashiondist.models.tta import tta_probs

# The smallest normal float32: log() of an underflowed 0 stays finite (softmax gives it back as 0 to 1e-38).
_PROB_FLOOR = torch.finfo(torch.float32).tiny


class ProbabilityEnsemble(nn.Module):
    """uint8 pixels [N, 1, H, W] -> log of the members' mean probabilities [N, K]."""

    def __init__(self, members: Sequence[nn.Module], ttas: Sequence[Tta]):
        super().__init__()
        if len(members) != len(ttas) or not members:
            raise ValueError("an ensemble needs one TTA per member and at least one member")
        self.members = nn.ModuleList(members)
        self.ttas = [Tta(t) for t in ttas]
        self.num_classes = members[0].num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([tta_probs(m, x, t) for m, t in zip(self.members, self.ttas, strict=True)])
        return probs.mean(0).clamp_min(_PROB_FLOOR).log()  # [M, N, K] -> [N, K]
