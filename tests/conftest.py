"""Fixtures shared by every test package.

`shared_data`: the reference Fashion-MNIST files at ../shared/data/fashion-mnist from the repository root
(present on development and CI machines, never on a user's). Tests that need them are marked
`shared_data` and skip, with the reason, where the folder is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared/data/fashion-mnist"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data/fashion-mnist (60k train images + labels, 10k t10k images, no t10k labels)."""
    if not (SHARED_DATA / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{SHARED_DATA} is absent (reference data exists on development and CI machines only)")
    return SHARED_DATA
