"""Real images and briefly trained models for the export and inference tests (shared by both folders).

A plain torch loop on the bundled sample: a few hundred steps give a model that is far from chance, so its
argmax is decided by real margins (an untrained model's near-ties would make argmax comparisons flaky) and
int8 quantization has a real accuracy to keep or lose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fashiondist.data.sources import load_data
from fashiondist.data.split import stratified_split
from fashiondist.models import create_model
from fashiondist.models.checkpoint import save_model


@dataclass(frozen=True)
class SampleSplit:
    train_images: np.ndarray  # uint8 [N, 28, 28]
    train_labels: np.ndarray  # int64 [N]
    val_images: np.ndarray  # uint8 [M, 28, 28]
    val_labels: np.ndarray  # int64 [M]
    class_names: tuple[str, ...]


def sample_split() -> SampleSplit:
    """The bundled sample's training part, split as a run with TrainConfig's defaults would (0.1, seed 0)."""
    data = load_data("sample", split="train")
    train_idx, val_idx = stratified_split(data.labels, 0.1, 0)
    return SampleSplit(
        data.images[train_idx],
        data.labels[train_idx],
        data.images[val_idx],
        data.labels[val_idx],
        data.class_names,
    )


def train_briefly(name: str, split: SampleSplit, directory: Path, steps: int = 200, batch: int = 64) -> Path:
    """Train registered model `name` for `steps` Adam steps and save it like a run's best/ (with val_acc).

    One torch thread: on a shared 2-core machine two threads spin against the other processes and run
    several times slower; the thread count is restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(name, split, directory, steps, batch)
    finally:
        torch.set_num_threads(threads)


def _train(name: str, split: SampleSplit, directory: Path, steps: int, batch: int) -> Path:
    torch.manual_seed(0)
    model = create_model(name, len(split.class_names))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.from_numpy(split.train_images).unsqueeze(1)  # [N, 28, 28] -> [N, 1, 28, 28] uint8
    labels = torch.from_numpy(split.train_labels)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        index = torch.randint(len(images), (batch,), generator=generator)
        loss, _ = model(images[index], targets=labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(split.val_images).unsqueeze(1))
    val_acc = float((logits.argmax(1).numpy() == split.val_labels).mean())
    save_model(
        directory,
        model,
        name,
        {},
        len(split.class_names),
        split.class_names,
        {"metric": {"val_acc": val_acc}},
    )
    return directory
