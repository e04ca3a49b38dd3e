"""One registry creates every model by name; the CLI, the trainer and the exporter all use it.

Importing this module does not import torch (the CLI builds `choices=` from `list_models()` at start-up):
an entry names its builder as "module:Class" under `fashiondist.models`, imported on `create_model`.

A variant is one entry: builder, the kwargs it passes (under any the caller gives), a one-line description,
and its recipe, the TrainConfig overrides it needs to train well (defaults < recipe < YAML file < flags).
"""

from __future__ import annotations

import copy
import importlib
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fashiondist.errors import InputError

if TYPE_CHECKING:
    from fashiondist.models.base import Classifier

DEFAULT_MODEL = "convnet"

# The notebook trained its Keras models with Adam at 1e-3 and no decay; Adam's coupled weight decay would act
# as an L2 penalty the notebook did not have.
_NOTEBOOK_ADAM = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: str  # "module:Class" under fashiondist.models
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)


_ENTRIES = (
    ModelEntry(
        "cnn",
        "cnn:SimpleCNN",
        "notebook model_1: conv 32, pool, dense 64",
        recipe={**_NOTEBOOK_ADAM, "epochs": 20, "batch_size": 256},
    ),
    ModelEntry(
        "cnn-dropout",
        "cnn:DropoutCNN",
        "notebook model_2: 3 x conv-pool-dropout, dense 128",
        recipe={**_NOTEBOOK_ADAM, "epochs": 25, "batch_size": 128},
    ),
    ModelEntry(
        "autoencoder",
        "autoencoder:ConvAutoencoder",
        "notebook autoencoder's encoder + head; CE + recon. MSE",
        kwargs={"width": 0.25},  # 64/32 channels instead of the notebook's 256/128: 16x cheaper on the CPU
        recipe={**_NOTEBOOK_ADAM, "epochs": 15, "batch_size": 128},
    ),
    ModelEntry(
        "resnet",
        "resnet:KerasResNet",
        "notebook Keras ResNet v1: 7x7 stem, 4x2 blocks, 64-512",
        # Keras L2 1e-4 adds 1e-4 * w^2 to the loss, i.e. 2e-4 * w to the gradient: torch's weight_decay.
        recipe={**_NOTEBOOK_ADAM, "weight_decay": 2e-4, "epochs": 10, "batch_size": 128},
    ),
    ModelEntry(
        "convnet",
        "cnn:ConvNet",
        "fast BatchNorm convnet: 3 x conv-pool-BN-GELU",
        # lr is per global batch of 256; label smoothing and flip + 2px shift (the config's default augment).
        recipe={
            "optimizer": "sgd",
            "lr": 0.2,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "linear",
            "batch_size": 256,
            "label_smoothing": 0.1,
            "epochs": 10,
        },
    ),
    ModelEntry(
        "resnet9",
        "resnet:ResNet9",
        "ResNet-9 for 28x28, half width: stronger, slower",
        kwargs={"width": 0.5},
        recipe={
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "linear",
            "batch_size": 256,
            "label_smoothing": 0.1,
            "epochs": 12,
        },
    ),
)
_REGISTRY = {entry.name: entry for entry in _ENTRIES}


def list_models() -> list[str]:
    """Registered names: the notebook's variants first, then ours."""
    return list(_REGISTRY)


def _entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def model_description(name: str) -> str:
    return _entry(name).description


def model_recipe(name: str) -> dict[str, Any]:
    """TrainConfig overrides the variant trains well with (a fresh copy; enum fields as their string values)."""
    return copy.deepcopy(_entry(name).recipe)


def create_model(name: str, num_classes: int, **kwargs: Any) -> Classifier:
    """Build a registered model with fresh weights (seed with `torch.manual_seed` first for reproducibility).

    `kwargs` override the entry's defaults; an option the builder does not take is an InputError naming the
    options it does take.
    """
    entry = _entry(name)
    cls = check_model_kwargs(name, kwargs)
    try:
        return cls(num_classes, **{**entry.kwargs, **kwargs})
    except (TypeError, ValueError, RuntimeError) as err:  # a value the builder cannot use (a width of 0)
        raise InputError(f"model {name!r} with model_kwargs {kwargs}: {str(err).splitlines()[0]}") from None


def check_model_kwargs(name: str, kwargs: dict[str, Any]) -> type:
    """The builder class of `name`, after checking `kwargs` against its signature: every option is one it
    takes, of the type of its default (a number where a number goes, a bool where a bool goes). InputError
    naming the option otherwise. Imports the model's module (and torch)."""
    entry = _entry(name)
    module_name, _, class_name = entry.builder.partition(":")
    cls = getattr(importlib.import_module(f"fashiondist.models.{module_name}"), class_name)
    params = {p.name: p for p in inspect.signature(cls).parameters.values() if p.name != "num_classes"}
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise InputError(
            f"model {name!r} has no option(s) {', '.join(unknown)}",
            hint=f"its options: {', '.join(params) or 'none'}",
        )
    for key, value in kwargs.items():
        default = params[key].default
        if default is inspect.Parameter.empty or default is None:
            continue
        if not _fits_default(value, default):
            raise InputError(
                f"config key 'model_kwargs.{key}': {str(value)[:60]!r} does not fit model {name!r} "
                f"(its default: {default!r})"
            )
    return cls


def _fits_default(value: Any, default: Any) -> bool:
    """Whether `value` has the type of `default`: a bool for a bool, an int for an int, a number for a float,
    a list or tuple (of such items) for a tuple."""
    if isinstance(default, (tuple, list)):
        return (
            isinstance(value, (tuple, list))
            and len(value) > 0
            and all(_fits_default(v, default[0]) for v in value)
            if default
            else isinstance(value, (tuple, list))
        )
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))
