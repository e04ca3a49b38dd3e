"""Several trained models exported as ONE ONNX graph: the mean of their probabilities.

    export_ensemble([Path("runs/cv5")], Path("runs/cv5/model.onnx"))            # a folds run: its K folds
    export_ensemble([Path("runs/sweep")], out, top_k=3)                          # a sweep's 3 best variants
    fashiondist export runs/a runs/b runs/c --out model.onnx                     # any list of runs

The graph is `models.ensemble.ProbabilityEnsemble` (each member under its own TTA and with its own
normalisation inside it) behind the usual head, so the file keeps the contract: input `pixels` uint8
[N, 1, 28, 28], output `probs` float32 [N, K], the mean of the members' probabilities; `fashiondist infer`
serves it like any model. Its metadata lists the members (`ensemble_members`). It is checked like every
export (`exporter.export_model`): onnx.checker, parity against the PyTorch ensemble at batch sizes 1, 7, 256,
and the accuracy the ensemble scored, reproduced by the ONNX model:

- members that share one validation split (the variants of a sweep, runs with the same data, fraction and
  split seed, e.g. `--seed 1 --split-seed 0`): the mean of the probabilities the runs themselves saved
  (`val_predictions.npz`), judged per image under the coarsest precision among them; with `--tta` (every
  member under one policy, e.g. flip-shift, rather than its run's) the PyTorch ensemble's own float32
  predictions on that split;
- folds (every member validated on another fold): no validation image is unseen by the whole ensemble, so it
  is measured on the private test split when the runs kept one (`--private-test`), else on the folds'
  images (in-sample: a consistency check of the file, not an accuracy estimate), against the PyTorch
  ensemble's own float32 predictions.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fashiondist.config import TrainConfig, Tta
from fashiondist.data.folds import private_split, run_split
from fashiondist.data.sources import load_data
from fashiondist.engine.distill import expand_members, load_ensemble
from fashiondist.engine.evaluate import PREDICTIONS_FILE, model_probs
from fashiondist.engine.run_record import find_run_record
from fashiondist.errors import InputError
from fashiondist.export.agreement import ValidationRecord
from fashiondist.export.check_images import run_config
from fashiondist.export.exporter import REPORT_NAME, ExportReport, export_model, write_export_report
from fashiondist.export.graph import model_metadata
from fashiondist.metrics import accuracy
from fashiondist.run_layout import SUMMARY_FILE, load_predictions, read_summary

LEADERBOARD_JSON = "leaderboard.json"
_COARSEST_FIRST = ("bf16", "fp16", "no")  # unit roundoff 2^-8, 2^-11, 2^-11 (TF32): export.agreement


def ensemble_members(paths: list[Path], top_k: int | None = None) -> list[Path]:
    """Model directories of the ensemble: `top_k` best rows of a sweep's leaderboard, else every path (a
    folds run standing for its folds)."""
    if top_k is None:
        return expand_members([str(p) for p in paths])
    if len(paths) != 1 or not (paths[0] / LEADERBOARD_JSON).is_file():
        raise InputError(
            "--ensemble K takes one sweep directory (with leaderboard.json)", hint="or list the runs instead"
        )
    rows = json.loads((paths[0] / LEADERBOARD_JSON).read_text())["rows"]
    if not 2 <= top_k <= len(rows):
        raise InputError(
            f"--ensemble {top_k}: the sweep {paths[0]} has {len(rows)} variants; use 2..{len(rows)}"
        )
    return expand_members([str(paths[0] / Path(row["run_dir"]).name) for row in rows[:top_k]])


def _split_key(member: Path, cfg: TrainConfig) -> tuple:
    """What makes a member's validation split: its data, fraction, split seed, private split and fold.

    The data by the sha256 its run recorded (run.json), so one dataset named two ways (`../data/x` from
    one directory, `/home/u/data/x` from another) is one; by the config's spec where there is no record.
    """
    try:
        record = find_run_record(member)
    except InputError:
        record = None  # a damaged run.json: the spec still says which data
    data = record["data"]["sha256"] if record else cfg.data
    return (data, cfg.val_fraction, cfg.data_seed(), cfg.private_test, cfg.folds, cfg.fold)


def _shared_validation(
    members: list[Path], configs: list[TrainConfig], tmp: Path, ensemble: torch.nn.Module, tta: Tta | None
) -> tuple[np.ndarray, np.ndarray, ValidationRecord] | None:
    """(images, labels, record) of the members' common validation split, from the runs' own predictions;
    under another `tta` than the runs validated with, from the PyTorch ensemble's float32 predictions."""
    if (
        len({_split_key(m, c) for m, c in zip(members, configs, strict=True)}) != 1
        or configs[0].fold is not None
    ):
        return None
    if not all(
        (m.parent / PREDICTIONS_FILE).is_file() and (m.parent / SUMMARY_FILE).is_file() for m in members
    ):
        return None  # bare checkpoints: nothing the runs measured to compare with
    data = load_data(configs[0].data)
    val_idx = run_split(data.labels, configs[0])[1]
    if tta is not None:
        return _pytorch_check(ensemble, data.images[val_idx], data.labels[val_idx], configs[0], tmp)
    probs, precisions = [], []
    for member in members:
        run_dir = member.parent
        y_true, member_probs = load_predictions(run_dir)
        if not np.array_equal(y_true, data.labels[val_idx]):
            return None
        probs.append(member_probs)
        summary = read_summary(run_dir)
        precisions.append(summary.get("precision"))
    mean = np.mean(probs, axis=0).astype(np.float32)
    path = tmp / PREDICTIONS_FILE
    np.savez(path, y_true=data.labels[val_idx], probs=mean)
    precision = next((p for p in _COARSEST_FIRST if p in precisions), None)
    record = ValidationRecord(accuracy(data.labels[val_idx], mean.argmax(1)), Tta.NONE.value, precision, path)
    return data.images[val_idx], data.labels[val_idx], record


def _folds_check(
    ensemble: torch.nn.Module, configs: list[TrainConfig], tmp: Path, log: Callable[[str], None]
) -> tuple[np.ndarray, np.ndarray, ValidationRecord]:
    """The private test split (or, without one, the members' validation images), scored by the float32 PyTorch
    ensemble (folds, or members with different validation splits)."""
    cfg = configs[0]
    data = load_data(cfg.data)
    if cfg.private_test > 0:
        index = private_split(data.labels, cfg.private_test)[1]
        where = f"the {len(index):,} private test images"
    else:
        index = np.sort(np.concatenate([run_split(data.labels, c)[1] for c in configs]))
        where = f"the {len(index):,} images the members validated on (in-sample for the ensemble)"
    log(f"ensemble accuracy checked on {where}")
    return _pytorch_check(ensemble, data.images[index], data.labels[index], cfg, tmp)


def _pytorch_check(
    ensemble: torch.nn.Module, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, tmp: Path
) -> tuple[np.ndarray, np.ndarray, ValidationRecord]:
    """(images, labels, record): the float32 PyTorch ensemble's predictions as the accuracy to reproduce."""
    probs = model_probs(ensemble, torch.as_tensor(images).unsqueeze(1), cfg.eval_batch_size).numpy()
    path = tmp / PREDICTIONS_FILE
    np.savez(path, y_true=labels, probs=probs)
    return images, labels, ValidationRecord(accuracy(labels, probs.argmax(1)), Tta.NONE.value, "no", path)


def export_ensemble(
    paths: list[Path],
    out_path: Path,
    *,
    top_k: int | None = None,
    tta: Tta | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export the members of `paths` as one graph into `out_path` (checked; export_report.json beside it).

    `tta`: every member under this test-time policy instead of its run's; the accuracy to reproduce is then
    the float32 PyTorch ensemble's under it, on the same images (the runs' saved predictions used another).
    """
    log = log or (lambda message: None)
    members = ensemble_members(paths, top_k)
    if len(members) < 2:
        raise InputError(
            f"{', '.join(map(str, paths))}: an ensemble needs at least 2 models, found {len(members)}"
        )
    ensemble = load_ensemble(members, tta=tta)
    metas = [json.loads((m / "model.json").read_text()) for m in members]
    configs = [run_config(m) for m in members]
    log(f"ensemble of {len(members)}: " + ", ".join(str(m.parent) for m in members))
    with tempfile.TemporaryDirectory() as tmp:
        checks = _shared_validation(members, configs, Path(tmp), ensemble, tta) or _folds_check(
            ensemble, configs, Path(tmp), log
        )
        images, labels, record = checks
        listed = [
            {
                "run": str(m.parent),
                "model": meta["name"],
                "tta": member_tta.value,
                "val_acc": (meta.get("metric") or {}).get("val_acc"),
            }
            for m, meta, member_tta in zip(members, metas, ensemble.ttas, strict=True)
        ]
        first = metas[0]
        meta = {
            "name": f"ensemble({len(members)}): " + ", ".join(sorted({m["name"] for m in metas})),
            "kwargs": {},
            "num_classes": first["num_classes"],
            "class_names": first["class_names"],
            "metric": {"val_acc": record.val_accuracy},
        }
        metadata = {
            **model_metadata(meta, Tta.NONE),
            "ensemble_members": json.dumps(listed),
            "ensemble": "mean of the members' probabilities, each under its own tta"
            if tta is None
            else f"mean of the members' probabilities, each under tta {Tta(tta).value}",
        }
        report = export_model(
            ensemble, out_path, metadata=metadata, images=images, labels=labels, record=record,
            tta=Tta.NONE, log=log,
        )  # fmt: skip
    write_export_report(report, out_path.with_name(REPORT_NAME))
    return report
