"""Fixtures shared by every test package.

`shared_data`: the reference Fashion-MNIST files at ../shared/data/fashion-mnist from the repository root
(present on development and CI machines, never on a user's). Tests that need them are marked
`shared_data` and skip, with the reason, where the folder is absent.

`model_dir`, `onnx_model`, `sample_test_csv`: a briefly trained `cnn`, it exported to ONNX by the export
stage, and the bundled sample's test part as a CSV, for the inference and command-line tests (trained once
per session; the training helper is tests/export/trained_models.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
SHARED_DATA = REPO_ROOT.parent / "shared/data/fashion-mnist"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data/fashion-mnist (60k train images + labels, 10k t10k images, no t10k labels)."""
    if not (SHARED_DATA / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{SHARED_DATA} is absent (reference data exists on development and CI machines only)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(TESTS / "export"))
    from trained_models import sample_split, train_briefly

    return train_briefly("cnn", sample_split(), tmp_path_factory.mktemp("cnn") / "best")


@pytest.fixture(scope="session")
def onnx_model(model_dir: Path) -> Path:
    """The trained model exported (and parity-checked) by the export stage: what a user would infer with."""
    from trained_models import sample_split

    from fashiondist.export.exporter import export_checkpoint

    out = model_dir.parent / "model.onnx"
    export_checkpoint(model_dir, out, images=sample_split().val_images)
    return out


@pytest.fixture(scope="session")
def sample_test_csv() -> Path:
    """The sample's testX part: 1,000 rows, Id + 784 pixels, gzipped."""
    from fashiondist.data.sources import SAMPLE_DIR, SAMPLE_TEST_CSV

    return SAMPLE_DIR / SAMPLE_TEST_CSV


@pytest.fixture(scope="module")
def fresh_accelerate():
    """A module whose tests train in this process starts and leaves accelerate's state fresh: it is one per
    process, and its precision, fixed by the first Accelerator, cannot change (another module's run may have
    picked bf16, these ask for fp32)."""
    from accelerate_state import reset_accelerate

    reset_accelerate()
    yield
    reset_accelerate()


def _runnable_isas() -> tuple[str, ...]:
    from fashiondist.models import kernels

    built = kernels.compiled()
    return built.runnable_isas() if built is not None else ("none",)


@pytest.fixture(params=_runnable_isas())
def kernel_isa(request):
    """Each build of the C training kernels this CPU runs (avx512, avx2, baseline), switched in for the test;
    a skip where the extension was not built (a failure under CI=true)."""
    from extensions import require_built

    from fashiondist.models import kernels

    built = require_built(kernels.compiled(), "fashiondist.models._kernels")
    before = built.isa()
    built.use_isa(request.param)
    yield request.param
    built.use_isa(before)
