"""Every registered model exports to ONNX with a dynamic batch and matches PyTorch in onnxruntime.

This checks the models are export-friendly (no data-dependent shapes, preprocessing inside, dropout gone in
eval); the export stage's own wrapper, metadata and checks are tested with the export stage.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from fashiondist.constants import ONNX_INPUT_NAME, ONNX_LOGITS_NAME, ONNX_OUTPUT_NAME
from fashiondist.models import create_model, list_models


class _Probs(nn.Module):
    """uint8 pixels -> (probs, logits), the shape of the ONNX contract."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(pixels)
        return torch.softmax(logits, dim=1), logits


@pytest.mark.parametrize("name", list_models())
def test_onnx_export_matches_pytorch(name, sample_batch):
    images, _ = sample_batch
    torch.manual_seed(0)
    wrapper = _Probs(create_model(name, 10)).eval()
    program = torch.onnx.export(
        wrapper,
        (images[:7],),
        dynamo=True,
        input_names=[ONNX_INPUT_NAME],
        output_names=[ONNX_OUTPUT_NAME, ONNX_LOGITS_NAME],
        dynamic_shapes={"pixels": {0: torch.export.Dim("batch", min=1, max=65536)}},
        external_data=False,
        verbose=False,
    )
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for n in (1, 7):
        probs, logits = session.run(None, {ONNX_INPUT_NAME: images[:n].numpy()})
        with torch.no_grad():
            ref_probs, ref_logits = (t.numpy() for t in wrapper(images[:n]))
        assert probs.shape == (n, 10) and probs.dtype == np.float32
        assert np.abs(probs - ref_probs).max() <= 1e-5
        # Logits at init can reach ~50 (the Keras ResNet in eval, BN stats untrained): compare relatively.
        assert np.abs(logits - ref_logits).max() <= 1e-5 * max(1.0, np.abs(ref_logits).max())
