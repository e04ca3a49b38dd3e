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


def _runnable_isas() -> tuple[str, ...]:
    from fashiondist.models import kernels

    built = kernels.compiled()
    return built.runnable_isas() if built is not None else ("none",)


@pytest.fixture(params=_runnable_isas())
def kernel_isa(request):
    """Each build of the C training kernels this CPU runs (avx512, avx2, baseline), switched in for the test;
    a skip where the extension was not built (a failure under CI=true)."""
    import os

    from fashiondist.models import kernels

    built = kernels.compiled()
    if built is None:
        why = "fashiondist.models._kernels is not built (no C compiler when the package was installed)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)
    before = built.isa()
    built.use_isa(request.param)
    yield request.param
    built.use_isa(before)
