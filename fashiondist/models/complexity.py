"""How big and how costly a model is: parameters, and multiply-accumulates per image of inference."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fashiondist.constants import IMAGE_SHAPE


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_image(model: nn.Module) -> int:
    """Multiply-accumulates of one inference forward pass (conv and linear layers; FLOPs / 2).

    Counted by torch's FlopCounterMode on one zero image in eval mode, so it is the cost of the exported
    graph: the autoencoder's decoder, used only in training, is not included. The model's mode is restored.
    """
    was_training = model.training
    device = next(model.parameters()).device
    image = torch.zeros(1, *IMAGE_SHAPE, dtype=torch.uint8, device=device)
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
