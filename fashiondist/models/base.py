"""The contract every model keeps, in one base class.

Input: [N, 1, 28, 28] pixels on the 0..255 scale, any dtype (uint8 from the ONNX contract, float from the
trainer). Normalisation lives inside the model as buffers, so an exported graph carries its preprocessing and
a client feeds raw pixels. `forward(x)` returns logits [N, K]; `forward(x, targets=y)` returns
(loss, logits) where the loss is the variant's *whole* training objective. The trainer calls the model that
way through DDP, so a variant with an extra term (the autoencoder's reconstruction) computes it inside
`forward` and every parameter gets its gradient in the same backward pass.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashiondist.constants import PIXEL_MEAN, PIXEL_STD
from fashiondist.errors import InputError


class Classifier(nn.Module, abc.ABC):
    """Base of every registered model. Subclasses build layers and implement `classify`."""

    def __init__(self, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise InputError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
        self.num_classes = num_classes
        # Non-persistent: fixed facts from constants, not learned state, so checkpoints hold weights only.
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD), persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        """0..255 pixels of any dtype -> zero-mean, unit-variance floats in the buffers' dtype.

        Casting first lets uint8 input through and keeps the arithmetic in float32 under autocast (the first
        conv then runs in the autocast dtype).
        """
        return (x.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std

    @abc.abstractmethod
    def classify(self, z: Tensor) -> Tensor:
        """Normalised images [N, 1, H, W] -> logits [N, K]."""

    def forward(
        self, x: Tensor, targets: Tensor | None = None, label_smoothing: float = 0.0
    ) -> Tensor | tuple[Tensor, Tensor]:
        logits = self.classify(self.normalize(x))
        if targets is None:
            return logits
        return classification_loss(logits, targets, label_smoothing), logits


def classification_loss(logits: Tensor, targets: Tensor, label_smoothing: float) -> Tensor:
    """Mean cross-entropy in float32 (bf16/fp16 logits lose too much precision in the log-sum-exp)."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
