"""Where a training run stands: what `last/trainer_state.json` holds and a resumed run starts from."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fashiondist import __version__
from fashiondist.errors import InputError


@dataclass
class RunState:
    """The trainer's counters and best-so-far. The field names, in this order, are trainer_state.json's keys.

    `model`, `model_kwargs` and `global_batch` say which run this is (a resume must match them); `version` is
    the fashiondist that started the run.
    """

    model: str
    model_kwargs: dict[str, Any]
    global_batch: int
    epoch: int = 0  # the epoch in progress (0-based)
    epoch_step: int = 0  # accumulation windows already done in that epoch (stepped or skipped)
    # optimizer steps done in the whole run (the learning rate's step); windows whose step the fp16 loss
    # scaler skipped (inf/NaN gradients) are not counted: they are epoch x steps per epoch + epoch_step - step
    step: int = 0
    # loss x images, correct, images of the epoch so far, summed over all ranks
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    epoch_seconds: float = 0.0  # training seconds of the epoch so far
    train_seconds: float = 0.0  # training seconds of the finished epochs
    best_val_acc: float = -1.0
    best_epoch: int = 0  # 1-based; 0: none yet
    stale_epochs: int = 0  # epochs since the best one, for early stopping
    scaler: dict[str, Any] | None = None  # the fp16 loss scaler's state
    tracker_run: str | None = None  # the --log-with tracker's run id, reused on resume (engine.tracker_run)
    version: str = __version__
    # the config keys a resume must keep (run_checkpoint.RESUME_KEYS); None in checkpoints made before them
    resume_keys: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        # absent when None: a state read from a file without them (or a run without --log-with) is written
        # back unchanged
        for key in ("tracker_run", "resume_keys"):
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_json(cls, data: Any, source: Path) -> RunState:
        """The state read from `source`; a file without the run's identity is one InputError naming it."""
        names = [f.name for f in dataclasses.fields(cls)]
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [key for key in required if key not in data] if isinstance(data, dict) else required
        if missing:
            raise InputError(f"--resume {source}: not a fashiondist trainer state (no {', '.join(missing)})")
        hints = typing.get_type_hints(cls)
        for key in names:
            if key in data and not _fits(data[key], hints[key]):
                raise InputError(
                    f"--resume {source}: not a fashiondist trainer state ({key} is {data[key]!r})"
                )
        return cls(**{key: data[key] for key in names if key in data})


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the field's type (a whole number fits a float field; a bool fits no number)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
    return isinstance(value, origin or hint)
