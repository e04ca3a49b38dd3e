"""The registry: torch-free to import, clear errors, recipes that TrainConfig accepts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fashiondist.config import TrainConfig, apply_overrides
from fashiondist.errors import InputError
from fashiondist.models import DEFAULT_MODEL, create_model, list_models, model_description, model_recipe


def test_registry_imports_without_torch():
    code = "import sys, fashiondist.models as m; m.list_models(); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_names_cover_the_notebook_and_ours():
    names = list_models()
    assert names[:4] == ["cnn", "cnn-dropout", "autoencoder", "resnet"]
    assert DEFAULT_MODEL in names and len(names) >= 6
    assert all(model_description(name) for name in names)


def test_unknown_model_lists_the_choices():
    with pytest.raises(InputError, match="unknown model 'vgg'.*cnn-dropout.*convnet"):
        create_model("vgg", 10)
    with pytest.raises(InputError):
        model_recipe("vgg")


def test_unknown_option_names_the_accepted_ones():
    with pytest.raises(InputError, match="has no option.*depth") as err:
        create_model("convnet", 10, depth=3)
    assert "width" in str(err.value)


def test_bad_option_values_are_input_errors():
    with pytest.raises(InputError, match="width"):
        create_model("convnet", 10, width=0)
    with pytest.raises(InputError, match="at least 2 classes"):
        create_model("cnn", 1)


@pytest.mark.parametrize("name", list_models())
def test_recipe_is_a_valid_config(name):
    recipe = model_recipe(name)
    cfg = apply_overrides(TrainConfig(model=name), recipe, source=f"model recipe of {name}")
    assert cfg.to_dict().items() >= recipe.items()
    recipe["lr"] = -1.0
    assert model_recipe(name)["lr"] > 0, "model_recipe must return a copy"
