"""Test-time policy: a batch's class probabilities, averaged over views of each image: under flip TTA the
image and its horizontal mirror, under flip-shift those two and each of them moved one pixel up, down, left
and right (10 views; the training augmentation shifts by up to `shift` pixels, so these views are ones the
model was trained on).

One implementation for the engine's validation (`engine/evaluate.py`) and for the exported ONNX graph
(`ProbsHead`, traced by `export/`), so the file computes exactly what validation measured. The policy is the
function `tta_probs`, never part of a model's `forward`; `ProbsHead` only wraps it as a module to trace.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashiondist.config import Tta

# (dy, dx) of the flip-shift views besides the unmoved one: one pixel down, up, right, left
_SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def shifted(pixels: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """[N, C, H, W] moved `dy` rows down and `dx` columns right, the uncovered border zero (|dy|, |dx| <= 1).

    Zero padding and a crop: a Pad and a Slice in the exported graph, on any dtype (uint8 pixels here).
    """
    h, w = pixels.shape[2], pixels.shape[3]
    padded = F.pad(pixels, (1, 1, 1, 1))
    return padded[:, :, 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def tta_probs(model: nn.Module, pixels: torch.Tensor, tta: Tta = Tta.NONE) -> torch.Tensor:
    """uint8 pixels [N, 1, H, W] -> float32 probabilities [N, K]: the mean over the policy's views.

    The images and their mirrors go through the model as one batch of 2N; flip-shift then adds one pass of
    2N per shift, so the activations of a pass stay those of the flip policy's.
    """
    tta = Tta(tta)
    if tta is Tta.NONE:
        return model(pixels).float().softmax(dim=1)
    n = pixels.shape[0]
    both = torch.cat([pixels, pixels.flip(3)])  # [2N, 1, H, W]: originals, then mirrors
    probs = model(both).float().softmax(dim=1)  # [2N, K]
    if tta is Tta.FLIP_SHIFT:
        for dy, dx in _SHIFTS:
            probs = probs + model(shifted(both, dy, dx)).float().softmax(dim=1)
        probs = probs / (1 + len(_SHIFTS))
    return 0.5 * (probs[:n] + probs[n:])


class ProbsHead(nn.Module):
    """The exported graph: uint8 pixels [N, 1, 28, 28] -> float32 probabilities [N, K], by `tta_probs`."""

    def __init__(self, model: nn.Module, tta: Tta = Tta.NONE):
        super().__init__()
        self.model = model
        self.tta = Tta(tta)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return tta_probs(self.model, pixels, self.tta)
