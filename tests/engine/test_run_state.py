"""The trainer's run state: last/trainer_state.json keeps its format, so checkpoints from before the
dataclass resume, and a file that is not a trainer state is one clear error."""

from __future__ import annotations

import json

import pytest

from fashiondist.engine import run_checkpoint
from fashiondist.engine.run_state import RunState
from fashiondist.errors import InputError

# A last/trainer_state.json as the dict-based trainer wrote it (a 10-class cnn run stopped mid-epoch).
OLD_STATE = {
    "model": "cnn",
    "model_kwargs": {"width": 0.5},
    "global_batch": 256,
    "epoch": 2,
    "epoch_step": 7,
    "step": 69,
    "epoch_sums": [1234.5, 1500.0, 1792.0],
    "epoch_seconds": 3.25,
    "train_seconds": 24.48,
    "best_val_acc": 0.7933333333333333,
    "best_epoch": 2,
    "stale_epochs": 0,
    "scaler": None,
    "version": "0.1.0",
}


def test_an_old_state_file_round_trips_unchanged(tmp_path):
    (tmp_path / run_checkpoint.TRAINER_STATE).write_text(json.dumps(OLD_STATE, indent=2) + "\n")
    state = RunState.from_json(run_checkpoint.load_trainer_state(tmp_path), tmp_path)
    assert (state.epoch, state.epoch_step, state.step, state.model_kwargs) == (2, 7, 69, {"width": 0.5})
    assert state.to_json() == OLD_STATE
    assert list(state.to_json()) == list(OLD_STATE), "the keys keep their order in the file"


def test_a_fresh_state_has_the_files_keys():
    fresh = RunState("cnn", {}, 128).to_json()
    assert list(fresh) == list(OLD_STATE)
    counters = (fresh["epoch"], fresh["step"], fresh["best_val_acc"], fresh["epoch_sums"])
    assert counters == (0, 0, -1.0, [0.0, 0.0, 0.0])


@pytest.mark.parametrize("data", [{"epoch": 3}, ["not", "a", "dict"]])
def test_a_file_without_the_runs_identity_is_one_error(tmp_path, data):
    source = tmp_path / run_checkpoint.TRAINER_STATE
    with pytest.raises(InputError, match="not a fashiondist trainer state") as err:
        RunState.from_json(data, source)
    assert str(source) in str(err.value) and "model" in str(err.value)
