"""`build_optimizer`: torch's fused update on CPU (and CUDA) parameters, except under fp16 loss scaling."""

from __future__ import annotations

import pytest
import torch

from fashiondist.config import Optimizer, TrainConfig
from fashiondist.engine.prepared import build_optimizer
from fashiondist.models.registry import create_model


@pytest.mark.parametrize("kind", list(Optimizer))
def test_fused_unless_the_loss_is_scaled(kind):
    cfg = TrainConfig(model="cnn", optimizer=kind)
    model = create_model("cnn", 10)
    assert build_optimizer(cfg, model).defaults["fused"] is True
    assert not build_optimizer(cfg, model, loss_scaled=True).defaults.get("fused")


def test_the_fused_update_matches_the_loop():
    """One step of each optimizer, fused and per-parameter, from the same gradients: the same weights up to
    float32 rounding."""
    for kind in Optimizer:
        cfg = TrainConfig(model="cnn", optimizer=kind, weight_decay=5e-4, momentum=0.9)
        models = []
        for loss_scaled in (False, True):  # True: the per-parameter loop
            torch.manual_seed(0)
            model = create_model("cnn", 10)
            torch.manual_seed(1)
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            optimizer = build_optimizer(cfg, model, loss_scaled)
            for _ in range(3):
                optimizer.step()
            models.append(model)
        for fused, loop in zip(models[0].parameters(), models[1].parameters(), strict=True):
            # the two differ by float32 rounding of each update: a few ulps of a weight (|w| < 1: ~1e-7)
            # per step on any CPU; a wrong update (another formula, a missed decay) moves weights by
            # ~lr x grad, >= 1e-4 here, far outside these bounds
            torch.testing.assert_close(fused, loop, rtol=1e-5, atol=1e-6)
