"""Model files: weights in safetensors, and beside them the JSON that rebuilds the model (no pickle anywhere).

A model directory holds `model.safetensors` and `model.json` ({"name", "kwargs", "num_classes",
"class_names", "version", ...extra}); `create_model(name, num_classes, **kwargs)` rebuilds the module and the
weights load strictly. Both files are written to a temp file and renamed, so a crash never leaves a torn file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from fashiondist import __version__
from fashiondist.atomic_io import write_bytes, write_text
from fashiondist.errors import InputError
from fashiondist.models.base import Classifier
from fashiondist.models.registry import create_model
from fashiondist.run_layout import BEST_DIR

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel / torch.compile wrappers (what accelerate's unwrap_model does)."""
    while True:
        if isinstance(model, DataParallel | DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _clean_key(key: str) -> str:
    """`module.` (DDP) in front and `_orig_mod.` (torch.compile, possibly of a submodule) anywhere, removed."""
    while key.startswith("module."):
        key = key[len("module.") :]
    return ".".join(part for part in key.split(".") if part != "_orig_mod")


def _clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights with wrapper prefixes stripped, detached, contiguous (channels_last weights are not), on the CPU."""
    return {
        _clean_key(key): tensor.detach().to("cpu").contiguous()
        for key, tensor in unwrap(model).state_dict().items()
    }


def save_model(
    directory: str | Path,
    model: nn.Module,
    name: str,
    kwargs: dict[str, Any],
    num_classes: int,
    class_names: Sequence[str],
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Write `directory`/model.safetensors and model.json (created if missing); return the directory.

    `name` and `kwargs` are what `create_model` was called with, so `load_model` rebuilds the same module.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    meta = {
        "name": name,
        "kwargs": dict(kwargs),
        "num_classes": num_classes,
        "class_names": list(class_names),
        "version": __version__,
        **(extra_meta or {}),
    }
    text = json.dumps(meta, indent=2)  # fails before any file is touched if extra_meta is not JSON
    tensors = _clean_state_dict(model)
    write_bytes(directory / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    write_text(directory / META_FILE, text + "\n")
    return directory


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, its model.safetensors, or a run directory (its best/ model) -> the model directory."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return path.parent
    for candidate in (path, path / BEST_DIR):
        if (candidate / WEIGHTS_FILE).is_file():
            return candidate
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    raise InputError(
        f"{path}: not a model (no {WEIGHTS_FILE} here or in {BEST_DIR}/)",
        hint="pass a model directory, its model.safetensors, or a run directory",
    )


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: missing (a model's {META_FILE} sits next to its {WEIGHTS_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable model description ({err})") from None
    required = {"name": str, "kwargs": dict, "num_classes": int, "class_names": list}
    for key, kind in required.items():
        if not isinstance(meta, dict) or not isinstance(meta.get(key), kind):
            raise InputError(f"{path}: key {key!r} missing or not a {kind.__name__}")
    return meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a saved model with its weights: (model in eval mode on `device`, the model.json dict)."""
    directory = resolve_model_dir(path)
    meta = _read_meta(directory / META_FILE)
    weights = directory / WEIGHTS_FILE
    try:
        model = create_model(meta["name"], meta["num_classes"], **meta["kwargs"])
    except InputError as err:
        raise InputError(f"{directory / META_FILE}: {err}") from None
    try:
        # read on the CPU, then moved: safetensors refuses an indexed CPU device ("cpu:0", what accelerate
        # gives each rank of CPU DDP), and these models are small enough that the copy costs nothing
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{weights}: not a readable safetensors file ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{weights}: weights do not fit model {meta['name']!r} ({first})") from None
    return model.to(device).eval(), meta


def initial_weights(
    path: str | Path, name: str, kwargs: dict[str, Any], num_classes: int
) -> dict[str, torch.Tensor]:
    """The saved model at `path` (`--init`) as a state dict for a new run of model `name` with `kwargs` and
    `num_classes`; InputError when it is another model, another shape or another number of classes."""
    model, meta = load_model(path)
    ours = {"model": name, "model_kwargs": kwargs, "classes": num_classes}
    theirs = {"model": meta["name"], "model_kwargs": meta["kwargs"], "classes": meta["num_classes"]}
    for key, value in ours.items():
        if theirs[key] != value:
            raise InputError(
                f"--init {path}: the saved model has {key} {theirs[key]!r}, this run {value!r}",
                hint=f"start from a run of the same model, or train with its {key}",
            )
    return model.state_dict()
