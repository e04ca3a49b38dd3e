"""config.py: defaults < the model's recipe < YAML file < its per_model entry < command-line flags, each level
overriding the ones below it and leaving alone what it does not name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fashiondist.config import TrainConfig, load_saved_config, resolve_config, save_yaml
from fashiondist.errors import InputError
from fashiondist.models.registry import model_recipe

LEVELS = ("recipe", "yaml", "per_model", "flags")
_LR = {"recipe": 0.2, "yaml": 0.3, "per_model": 0.4, "flags": 0.5}  # each level's own learning rate


def _resolve(tmp_path: Path, levels: tuple[str, ...], model: str = "cnn") -> TrainConfig:
    """Each level in `levels` sets lr to its own value (and one key of its own); the others set nothing."""
    lr = _LR
    recipe = {"lr": lr["recipe"], "epochs": 7} if "recipe" in levels else {}
    data: dict = {}
    if "yaml" in levels:
        data.update(lr=lr["yaml"], seed=3)
    if "per_model" in levels:
        data["per_model"] = {"cnn": {"lr": lr["per_model"], "momentum": 0.8}, "other": {"lr": 9.0}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(data))
    flags = {"lr": lr["flags"], "grad_clip": 1.5} if "flags" in levels else {"lr": None}
    return resolve_config(model, config, flags, recipe_for=lambda name: dict(recipe))


@pytest.mark.parametrize("top", range(len(LEVELS) + 1))
def test_each_level_overrides_the_ones_below(tmp_path: Path, top: int):
    levels = LEVELS[:top]
    cfg = _resolve(tmp_path, levels)
    expected_lr = TrainConfig.lr if not levels else _LR[levels[-1]]
    assert cfg.lr == expected_lr  # the very float the winning level wrote: no arithmetic, exact
    # what a lower level set and no higher level named survives; an unset level leaves the default
    assert cfg.epochs == (7 if "recipe" in levels else TrainConfig.epochs)
    assert cfg.seed == (3 if "yaml" in levels else TrainConfig.seed)
    assert cfg.momentum == (0.8 if "per_model" in levels else TrainConfig.momentum)
    assert cfg.grad_clip == (1.5 if "flags" in levels else TrainConfig.grad_clip)
    assert cfg.model == "cnn"


def test_per_model_applies_to_its_model_only(tmp_path: Path):
    assert _resolve(tmp_path, LEVELS[:3], model="convnet").lr == _LR["yaml"]  # the file's, not cnn's


def test_the_registry_recipe_sits_between_defaults_and_the_file(tmp_path: Path):
    recipe = model_recipe("cnn")
    assert recipe["epochs"] != TrainConfig.epochs  # the notebook's 20 epochs
    assert resolve_config("cnn", recipe_for=model_recipe).epochs == recipe["epochs"]
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 3\n")
    assert resolve_config("cnn", config, recipe_for=model_recipe).epochs == 3


def test_an_unknown_key_names_its_level(tmp_path: Path):
    config = tmp_path / "run.yaml"
    config.write_text("per_model:\n  cnn:\n    lrr: 0.1\n")
    with pytest.raises(InputError, match=r"per_model\.cnn: unknown config key 'lrr'"):
        resolve_config("cnn", config)


def test_a_saved_config_reads_back_equal(tmp_path: Path):
    cfg = resolve_config("cnn", flags={"lr": 0.05, "tta": "flip"}, recipe_for=model_recipe)
    save_yaml(cfg, tmp_path / "config.yaml")
    assert load_saved_config(tmp_path / "config.yaml") == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # written atomically, no temp file left
