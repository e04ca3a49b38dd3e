"""Distillation: a student trained on a teacher ensemble's probabilities beside the true labels.

    fashiondist train --model convnet --teacher runs/cv5 --set distill_temperature=2 --set distill_weight=0.7

The teacher is one or more run directories (a folds run stands for its folds), averaged in probability space
by `models.ensemble.ProbabilityEnsemble`, each member under its own TTA: the very ensemble `fashiondist export`
writes as one ONNX graph. Its probabilities on the student's training images are computed once, in float32,
and cached in the student's run directory (`teacher_probs.npz`, keyed by the members' weights and the images),
so a resumed run or a rerun reads them back. The loss (Hinton et al. 2015):

    (1 - w) x the model's own loss on the true labels (mixed and smoothed as configured)
    + w x T^2 x KL(teacher_T || softmax(logits / T)),   teacher_T = softmax(log(p_teacher) / T)

T^2 keeps the soft term's gradient on the scale of the hard one as T grows. By default the teacher's
probabilities are of the un-augmented images, and under mixup/cutmix a mixed image gets the same mix of its
two teacher rows. With `distill_augmented` the teacher instead predicts every batch the student trains on,
augmented and mixed as the student sees it ("consistent teaching", Beyer et al. 2022, "Knowledge distillation:
a good teacher is patient and consistent"): nothing is cached, and each step costs a teacher forward more.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fashiondist.atomic_io import atomic_write
from fashiondist.config import TrainConfig, Tta
from fashiondist.errors import InputError
from fashiondist.models.checkpoint import load_model, resolve_model_dir
from fashiondist.models.ensemble import ProbabilityEnsemble
from fashiondist.run_layout import FOLD_PREFIX, TEACHER_FILE


def split_targets(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch's targets -> (true-label targets, teacher targets or None); see `engine.mixing`."""
    if targets.ndim == 3:
        return targets[:, 0], targets[:, 1]
    return targets, None


def add_distillation(
    loss: torch.Tensor, logits: torch.Tensor, teacher: torch.Tensor, temperature: float, weight: float
) -> torch.Tensor:
    """(1 - w) x `loss` + w x T^2 x KL(teacher || softmax(logits / T)); `teacher` [b, K] is at temperature T."""
    log_student = F.log_softmax(logits.float() / temperature, dim=1)  # float32, as classification_loss
    soft = F.kl_div(log_student, teacher, reduction="batchmean")
    return (1.0 - weight) * loss + weight * temperature**2 * soft


def expand_members(spec: str | list[str]) -> list[Path]:
    """Comma-separated run directories -> model directories; a folds run (fold-0/ ...) -> its folds."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    members: list[Path] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        path = Path(part)
        folds = sorted(path.glob(f"{FOLD_PREFIX}*"), key=lambda p: int(p.name[len(FOLD_PREFIX) :]))
        members.extend(folds if folds and path.is_dir() else [path])
    if not members:
        raise InputError(f"--teacher {spec!r}: names no run directory")
    return [resolve_model_dir(m) for m in members]


def load_ensemble(
    members: list[Path], device: str | torch.device = "cpu", tta: Tta | None = None
) -> ProbabilityEnsemble:
    """The members' best weights, each with the TTA its run was validated with (best/model.json), or all
    with `tta`."""
    models, ttas, classes = [], [], set()
    for member in members:
        model, meta = load_model(member, device)
        models.append(model)
        ttas.append(Tta(tta or meta.get("tta") or Tta.NONE.value))
        classes.add(int(meta["num_classes"]))
    if len(classes) > 1:
        raise InputError(f"ensemble members disagree on the number of classes: {sorted(classes)}")
    return ProbabilityEnsemble(models, ttas).eval()


def _run_ensemble(members: list[Path], acc, cfg: TrainConfig, tta: Tta | None = None) -> ProbabilityEnsemble:
    """The teacher on this process's device, in the memory format the run trains in (`load_ensemble`)."""
    ensemble = load_ensemble(members, acc.device, tta)
    return ensemble.to(memory_format=torch.channels_last) if cfg.channels_last else ensemble


def _cache_key(members: list[Path], images: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    for member in members:
        digest.update((member / "model.safetensors").read_bytes())
    return json.dumps({"members": [str(m.resolve()) for m in members], "sha256": digest.hexdigest()})


def _read_cache(path: Path, key: str) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return arrays["probs"] if str(arrays["key"]) == key else None
    except (ValueError, OSError, KeyError):
        return None  # a damaged cache is recomputed


def teacher_targets(
    acc, cfg: TrainConfig, images: np.ndarray, run_dir: Path, log: Callable[[str], None]
) -> torch.Tensor:
    """float32 [N, K]: the teacher's probabilities for uint8 `images` [N, H, W] at the run's temperature.

    The main process computes them (float32, every member's own TTA; channels_last when the run trains so)
    or reads the cache, saying which and how long it took through `log`; every rank then reads the same file,
    so all ranks train on bitwise the same targets.
    """
    from fashiondist.engine.evaluate import model_probs

    members = expand_members(cfg.teacher)
    key = _cache_key(members, images)
    path = run_dir / TEACHER_FILE
    if acc.is_main_process:
        if _read_cache(path, key) is None:
            start = time.perf_counter()
            log(f"teacher: predicting {len(images):,} training images with {len(members)} members ...")
            ensemble = _run_ensemble(members, acc, cfg)
            # [N, 1, H, W] uint8; np.require copies a read-only array, which torch warns of on the CPU
            pixels = torch.as_tensor(np.require(images, requirements="CW"), device=acc.device).unsqueeze(1)
            probs = model_probs(ensemble, pixels, cfg.eval_batch_size).cpu().numpy()
            run_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as fh:
                np.savez_compressed(fh, probs=probs.astype(np.float32), key=np.array(key))
            log(f"teacher: done in {time.perf_counter() - start:.0f} s, cached in {path}")
        else:
            log(f"teacher: probabilities read from {path}")
    acc.wait_for_everyone()
    probs = torch.as_tensor(_read_cache(path, key))
    return at_temperature(probs.clamp_min(torch.finfo(torch.float32).tiny).log(), cfg.distill_temperature)


def at_temperature(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log p / T): a teacher's probabilities [b, K] (as logs) at the distillation temperature."""
    return (log_probs.float() / temperature).softmax(dim=1)


def augmented_teacher(acc, cfg: TrainConfig, log: Callable[[str], None]) -> ProbabilityEnsemble:
    """The teacher that predicts each augmented batch (`distill_augmented`): the members on this process's
    device, in eval mode, channels_last when the run trains so, without TTA (the batch is one random view
    already); the training step runs it under the run's autocast."""
    members = expand_members(cfg.teacher)
    log(f"teacher: {len(members)} members predict every augmented batch (distill_augmented)")
    return _run_ensemble(members, acc, cfg, Tta.NONE).requires_grad_(False)
