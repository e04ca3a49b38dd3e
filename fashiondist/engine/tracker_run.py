"""The experiment tracker's run (`--log-with`), kept across resumes: its id is saved in `last/` (the trainer
state's `tracker_run`), so a resumed or requeued run logs into the tracker run it started instead of a new one.

    start_tracker(accelerator, cfg, trainer.state)   # after the Trainer read last/, before it trains

What the id does per tracker: wandb resumes the run of that id (`resume="allow"`); TensorBoard keeps its one
directory per variant (OUT/<model>) and ends each event file's name with the id, so a run's files are told
apart from those of an earlier run into the same --out. The project name stays the model's name.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fashiondist.config import TrainConfig
from fashiondist.engine.run_state import RunState


def start_tracker(accelerator, cfg: TrainConfig, state: RunState) -> str:
    """Start `cfg.log_with`'s tracker run: the one `state` (read from last/) names, else a new one whose id
    `state` then carries into every checkpoint. Returns the id."""
    if not state.tracker_run:
        state.tracker_run = uuid.uuid4().hex[:16]
    run_id = state.tracker_run
    accelerator.init_trackers(
        cfg.model,
        config=tracker_config(cfg),
        init_kwargs={
            "wandb": {"id": run_id, "resume": "allow"},
            "tensorboard": {"filename_suffix": f".{run_id}"},
        },
    )
    return run_id


def tracker_config(cfg: TrainConfig) -> dict[str, int | float | str | bool]:
    """The config as trackers take hyperparameters: scalars only (TensorBoard's hparams refuse None, dicts
    and lists with a ValueError), `model_kwargs.width` for a nested key, `null` for None, JSON for a list."""
    flat: dict[str, Any] = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return {k: _scalar(v) for k, v in flat.items()}


def _scalar(value: Any) -> int | float | str | bool:
    if value is None:
        return "null"
    if isinstance(value, int | float | str | bool):
        return value
    return json.dumps(value, default=str)
