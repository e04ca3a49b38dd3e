"""Real images for the model tests: the first images of the bundled Fashion-MNIST sample."""

from __future__ import annotations

import pytest
import torch

from fashiondist.data.sources import load_data


@pytest.fixture(scope="session")
def sample_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [8, 1, 28, 28], int64 labels [8]) from the bundled sample, 10 classes."""
    data = load_data("sample")
    images = torch.tensor(data.images[:8]).unsqueeze(1)  # [8, 28, 28] -> [8, 1, 28, 28]
    return images, torch.tensor(data.labels[:8])
