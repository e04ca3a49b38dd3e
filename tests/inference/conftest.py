"""Fixtures: a briefly trained `cnn` exported to ONNX, and the bundled sample's test part as a CSV.

The training helper lives beside the export tests (tests/export/trained_models.py); both folders use it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
from trained_models import sample_split, train_briefly  # noqa: E402

from fashiondist.data.sources import SAMPLE_DIR, SAMPLE_TEST_CSV  # noqa: E402

SAMPLE_TEST = SAMPLE_DIR / SAMPLE_TEST_CSV  # the sample's testX part: 1,000 rows, Id + 784 pixels, gzipped


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_briefly("cnn", sample_split(), tmp_path_factory.mktemp("cnn") / "best")


@pytest.fixture(scope="session")
def onnx_model(model_dir: Path) -> Path:
    """The trained model exported (and parity-checked) by the export stage: what a user would infer with."""
    from fashiondist.export.exporter import export_checkpoint

    out = model_dir.parent / "model.onnx"
    export_checkpoint(model_dir, out, images=sample_split().val_images)
    return out


@pytest.fixture(scope="session")
def sample_test_csv() -> Path:
    return SAMPLE_TEST
