"""`last/` (everything a resumed run needs) and `best/` (weights to ship), each written atomically.

A checkpoint directory is written whole into a temporary sibling, then swapped in: the old directory is
renamed aside, the new one renamed into place, the old one removed. A crash at any point leaves either the
old or the new directory complete (`find_last` also looks at the aside copy). Nothing is loaded with
unrestricted pickle: weights are safetensors, the optimizer state loads with `weights_only=True`, the rest
is JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fashiondist.atomic_io import write_json
from fashiondist.errors import InputError

TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"
EMA_DIR = "ema"


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `target` (see the module docstring)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = target.with_name(f".{target.name}.old")
    shutil.rmtree(aside, ignore_errors=True)
    if target.exists():
        os.replace(target, aside)
    os.replace(tmp, target)
    shutil.rmtree(aside, ignore_errors=True)


def save_last(
    run_dir: Path,
    save_weights,
    optimizer: torch.optim.Optimizer,
    ema_save_weights,
    state: dict[str, Any],
) -> Path:
    """Write `run_dir/last/`: weights (via `save_weights(dir)`), optimizer, EMA weights, trainer state."""
    target = run_dir / "last"
    with atomic_dir(target) as tmp:
        save_weights(tmp)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_STATE)
        if ema_save_weights is not None:
            ema_save_weights(tmp / EMA_DIR)
        write_json(tmp / TRAINER_STATE, state)
    return target


def find_last(path: str | Path) -> Path:
    """Resolve `--resume PATH`: a `last/` directory, or a run directory holding one."""
    path = Path(path)
    for candidate in (path, path / "last", path / ".last.old"):
        if (candidate / TRAINER_STATE).is_file():
            return candidate
    raise InputError(f"--resume {path}: no resumable checkpoint there (expected {path}/last/{TRAINER_STATE})")


def load_trainer_state(last_dir: Path) -> dict[str, Any]:
    return json.loads((last_dir / TRAINER_STATE).read_text())


def load_optimizer_state(last_dir: Path) -> dict[str, Any]:
    return torch.load(last_dir / OPTIMIZER_STATE, map_location="cpu", weights_only=True)
