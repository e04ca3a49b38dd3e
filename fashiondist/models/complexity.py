"""How big and how costly a model is: parameters, and multiply-accumulates per image of inference."""

from __future__ import annotations

import torch
from torch import nn

from fashiondist.constants import IMAGE_SHAPE


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one conv or linear call: each output element costs one dot product of the layer's fan-in."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    return output.numel() * module.in_features  # nn.Linear


def macs_per_image(model: nn.Module) -> int:
    """Multiply-accumulates of one inference forward pass (conv and linear layers).

    Counted with forward hooks on one zero image in eval mode, so it is the cost of the exported graph: the
    autoencoder's decoder, used only in training, is not included. The model's mode is restored. (torch's
    FlopCounterMode gives the same count but imports ~800 modules: over a second at every training start.)
    """
    total = 0

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(module, output)

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = [layer.register_forward_hook(hook) for layer in layers]
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *IMAGE_SHAPE, dtype=torch.uint8, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total
