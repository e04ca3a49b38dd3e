from __future__ import annotations

import pytest

from fashiondist.data.sources import load_data


@pytest.fixture(scope="session")
def sample():
    return load_data("sample")


@pytest.fixture(scope="session")
def sample_images(sample):
    return sample.images


@pytest.fixture(scope="session")
def sample_labels(sample):
    return sample.labels
