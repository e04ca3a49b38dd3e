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


@pytest.fixture(scope="session")
def tiny_train() -> list[str]:
    """`fashiondist train` options of a short cnn run, fp32 on every CPU kind (add --epochs, --data, --out)."""
    return [
        "--model",
        "cnn",
        "--batch-size",
        "64",
        "--quiet",
        "--precision",
        "no",
        "--set",
        "eval_batch_size=256",
    ]


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory, sample):
    """A 10-class train.csv of 400 real sample images (a stratified pick): a few seconds an epoch-set."""
    from fashiondist.data.csvio import write_competition_csv
    from fashiondist.data.split import stratified_split

    keep, _ = stratified_split(sample.labels, 1 - 400 / len(sample.labels), seed=1)
    path = tmp_path_factory.mktemp("tiny") / "train.csv"
    write_competition_csv(path, sample.ids[keep], sample.images[keep], sample.labels[keep])
    return path
