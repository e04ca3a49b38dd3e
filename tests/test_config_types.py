"""Integer config keys hold integers: `epochs: 1.7` in YAML or `--set epochs=1.9` once trained 1 epoch, exit 0."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fashiondist.cli import main
from fashiondist.config import TrainConfig, apply_overrides
from fashiondist.errors import InputError

INT_KEYS = [f.name for f in dataclasses.fields(TrainConfig) if f.type in (int, "int")]


def test_every_integer_key_is_listed():
    assert {"epochs", "batch_size", "grad_accum", "eval_batch_size", "shift", "early_stop", "seed"} <= set(
        INT_KEYS
    )


@pytest.mark.parametrize("key", INT_KEYS)
def test_integer_keys_refuse_fractions_and_keep_whole_numbers(key):
    for bad in (1.7, 2.5, float("inf"), float("nan"), "1.9", True):
        with pytest.raises(InputError, match=rf"^config key '{key}': .* is not an integer$"):
            apply_overrides(TrainConfig(), {key: bad})
    for whole, value in ((3, 3), ("3", 3), (3.0, 3)):  # 3.0 (YAML `3.0`, `--set epochs=3.0`) loses nothing
        assert getattr(apply_overrides(TrainConfig(), {key: whole}), key) == value


def test_fractional_epochs_in_yaml_or_set_are_refused_before_training(tmp_path: Path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model: cnn\nepochs: 1.7\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 2
    assert capsys.readouterr().err == "fashiondist: error: config key 'epochs': 1.7 is not an integer\n"
    assert main(["train", "--model", "cnn", "--set", "epochs=1.9", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "fashiondist: error: config key 'epochs': 1.9 is not an integer\n"
    assert not out.exists()
