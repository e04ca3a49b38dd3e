"""Test-time policy: a batch's class probabilities, averaged with its horizontal mirror under flip TTA.

One implementation for the engine's validation (`engine/evaluate.py`) and for the exported ONNX graph
(`ProbsHead`, traced by `export/`), so the file computes exactly what validation measured. The policy is the
function `tta_probs`, never part of a model's `forward`; `ProbsHead` only wraps it as a module to trace.
"""

from __future__ import annotations

import torch
from torch import nn

from fashiondist.config import Tta


def tta_probs(model: nn.Module, pixels: torch.Tensor, tta: Tta = Tta.NONE) -> torch.Tensor:
    """uint8 pixels [N, 1, H, W] -> float32 probabilities [N, K]; flip: the mean over image and mirror.

    The images and their mirrors go through the model as one batch of 2N.
    """
    if Tta(tta) is Tta.FLIP:
        n = pixels.shape[0]
        both = torch.cat([pixels, pixels.flip(3)])  # [2N, 1, H, W]: originals, then mirrors
        probs = model(both).float().softmax(dim=1)  # [2N, K]
        return 0.5 * (probs[:n] + probs[n:])
    return model(pixels).float().softmax(dim=1)


class ProbsHead(nn.Module):
    """The exported graph: uint8 pixels [N, 1, 28, 28] -> float32 probabilities [N, K], by `tta_probs`."""

    def __init__(self, model: nn.Module, tta: Tta = Tta.NONE):
        super().__init__()
        self.model = model
        self.tta = Tta(tta)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return tta_probs(self.model, pixels, self.tta)
