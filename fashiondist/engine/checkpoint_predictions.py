"""Predictions of a saved checkpoint on a labelled data source, written as a run directory the evaluation
stage reads (`fashiondist evaluate CHECKPOINT --data SOURCE`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from fashiondist import __version__
from fashiondist.atomic_io import write_json
from fashiondist.config import Tta
from fashiondist.data.sources import load_data
from fashiondist.engine.evaluate import model_probs, save_predictions
from fashiondist.errors import InputError
from fashiondist.models.checkpoint import load_model, resolve_model_dir
from fashiondist.models.complexity import count_parameters, macs_per_image
from fashiondist.run_layout import METRICS_FILE, SUMMARY_FILE


def predict_checkpoint(checkpoint: str | Path, data_spec: str, out: Path, batch_size: int = 1024) -> Path:
    """Predict every labelled image of `data_spec` with `checkpoint`; write `out` as an evaluable run dir."""
    model, meta = load_model(checkpoint)
    data = load_data(data_spec)
    if data.labels is None:
        raise InputError(f"--data {data_spec}: has no labels to evaluate against")
    if data.num_classes > meta["num_classes"]:
        raise InputError(
            f"--data {data_spec}: labels reach {data.num_classes - 1}, the model {checkpoint} knows "
            f"{meta['num_classes']} classes"
        )
    tta = Tta(meta.get("tta", Tta.NONE.value))
    # [N, 1, H, W] uint8; np.require copies a read-only array (a loaded dataset's are), which torch warns of
    images = torch.as_tensor(np.require(data.images, requirements="CW")).unsqueeze(1)
    probs = model_probs(model, images, batch_size, tta)
    out.mkdir(parents=True, exist_ok=True)
    save_predictions(out, data.labels, probs.numpy())
    run_dir = resolve_model_dir(checkpoint).parent
    history = run_dir / METRICS_FILE
    if history.is_file():  # the checkpoint's own training curves, when it came from a run directory
        shutil.copyfile(history, out / METRICS_FILE)
    else:
        (out / METRICS_FILE).write_text("")
    write_json(out / SUMMARY_FILE, {
        "model": meta["name"],
        "model_kwargs": meta["kwargs"],
        "params": count_parameters(model),
        "macs": macs_per_image(model),
        "train_seconds": None,
        "images_per_s": None,
        "best_epoch": meta.get("epoch"),
        "epochs": meta.get("epoch"),
        "num_classes": meta["num_classes"],
        "class_names": meta["class_names"],
        "evaluated_on": data_spec,
        "checkpoint": str(checkpoint),
        "version": __version__,
    })  # fmt: skip
    return out
