"""`last/` (everything a resumed run needs) and `best/` (weights to ship), each written atomically.

A checkpoint directory is written whole into a temporary sibling, then swapped in: the old directory is
renamed aside, the new one renamed into place. `last/`'s previous version stays aside as `.last.prev/`
(one epoch or preemption earlier), so a damaged `last/` (a truncated copy, a full disk) falls back to it;
`best/`'s is removed. A crash at any point leaves a complete directory; a temporary `.NAME.tmp-*` left by
a crash mid-write is removed by the next run (`sweep_partial`). Nothing is loaded with unrestricted pickle:
weights are safetensors, the optimizer state loads with `weights_only=True`, the rest is JSON.

Resuming reads and checks every file of `last/` before the run starts (`load_last`): a damaged one is one
InputError naming the file and what to do, or, where `.last.prev/` is complete, a fallback that says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from fashiondist.atomic_io import write_bytes, write_json
from fashiondist.engine.run_state import RunState
from fashiondist.errors import FashiondistError, InputError
from fashiondist.run_layout import BEST_DIR, CONFIG_FILE, LAST_DIR

TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"
EMA_DIR = "ema"
WEIGHTS = "model.safetensors"
PREVIOUS_LAST = ".last.prev"  # last/ as it was before the latest save
RESUME_HINT = "resume from another checkpoint, or rerun without --resume to start again"
# The config keys a resumed run must share with its checkpoint, and why. World size and grad_accum may change:
# the global batch (batch_size) fixes what an optimizer step sees.
RESUME_KEYS = {
    "model": "the weights belong to it",
    "model_kwargs": "the weights belong to it",
    "batch_size": "the global batch fixes what each optimizer step sees",
    "data": "it decides the training and validation split",
    "val_fraction": "it decides the validation split (training images would leak into validation)",
    "seed": "it decides the validation split (training images would leak into validation)",
    "split_seed": "it decides the validation split (training images would leak into validation)",
    "private_test": "it decides the held-out private split (its images would leak into training)",
    "fold": "it decides which fold is validation (training images would leak into validation)",
    "folds": "it decides the folds (training images would leak into validation)",
    "optimizer": "the optimizer state belongs to it",
}


@contextlib.contextmanager
def atomic_dir(target: Path, keep_previous: Path | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `target` (see the module docstring).

    With `keep_previous`, the directory `target` was is kept there (replacing an older one) instead of removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = keep_previous or target.with_name(f".{target.name}.old")
    shutil.rmtree(aside, ignore_errors=True)
    if target.exists():
        os.replace(target, aside)
    os.replace(tmp, target)
    if keep_previous is None:
        shutil.rmtree(aside, ignore_errors=True)


def resume_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The values of RESUME_KEYS in a config's dict (TrainConfig.to_dict()), as trainer_state.json keeps them."""
    return {key: config.get(key) for key in RESUME_KEYS}


def check_resumable(last: LastCheckpoint, config: dict[str, Any]) -> None:
    """InputError naming the first of RESUME_KEYS where this run's `config` (TrainConfig.to_dict()) differs
    from the checkpoint's. Checkpoints made before trainer_state.json kept them are compared with their run's
    config.yaml, when there is one (model, model_kwargs and global batch are in every trainer state)."""
    state = last.state
    recorded = dict(state.resume_keys or _saved_resume_keys(last.directory.parent))
    recorded.update(model=state.model, model_kwargs=state.model_kwargs, batch_size=state.global_batch)
    for key, why in RESUME_KEYS.items():
        if key in recorded and not _same_value(key, recorded[key], config.get(key)):
            raise InputError(
                f"--resume {last.directory}: the checkpoint has {key}={recorded[key]!r}, this run "
                f"{config.get(key)!r}; {why}",
                hint=f"resume with the same {key}, or start a new --out",
            )


def _saved_resume_keys(run_dir: Path) -> dict[str, Any]:
    """RESUME_KEYS from `run_dir/config.yaml` (the run's resolved config), or nothing when it is unreadable."""
    from fashiondist.config import load_saved_config

    try:
        return resume_keys(load_saved_config(run_dir / CONFIG_FILE).to_dict())
    except InputError:
        return {}


def _same_value(key: str, recorded: Any, mine: Any) -> bool:
    """Equal, a data path compared as the file it names (a relative path from another directory is the same)."""
    if recorded == mine:
        return True
    if key == "data" and isinstance(recorded, str) and isinstance(mine, str):
        a, b = Path(recorded), Path(mine)
        return a.exists() and b.exists() and os.path.samefile(a, b)
    return False


def non_finite_loss(
    model: str, step: int, epoch: int, run_dir: Path | None, precision: str
) -> FashiondistError:
    """The error of a run stopped by a non-finite loss: the checkpoint to go back to only when this run has one
    (`run_dir` None: it saved none and resumed from none), the fp16 -> bf16 advice only for a run in fp16."""
    last = run_dir / LAST_DIR if run_dir is not None else None
    where = (
        f"the last good checkpoint is {last} (resume from it with --resume auto and a lower --lr)"
        if last is not None and (last / TRAINER_STATE).is_file()
        else "no checkpoint was saved before it"
    )
    hints = ["lower --lr", "add --set grad_clip=1.0"]
    if precision == "fp16":
        hints.append("use --precision bf16 instead of fp16 (a wider exponent range)")
    return FashiondistError(
        f"{model}: non-finite loss at optimizer step {step} (epoch {epoch}); stopped without saving, {where}",
        hint=", or ".join([", ".join(hints[:-1]), hints[-1]]),
    )


def sweep_partial(run_dir: Path) -> list[Path]:
    """Remove the `.NAME.tmp-*` directories a crash mid-save left in `run_dir` (call it holding the run's
    lock, so no live writer owns one); return them."""
    stray = sorted(run_dir.glob(".*.tmp-*")) if run_dir.is_dir() else []
    for path in stray:
        shutil.rmtree(path, ignore_errors=True)
    return stray


def save_last(
    run_dir: Path,
    save_weights,
    optimizer: torch.optim.Optimizer,
    ema_save_weights,
    state: dict[str, Any],
) -> Path:
    """Write `run_dir/last/`: weights (via `save_weights(dir)`), optimizer, EMA weights, trainer state."""
    target = run_dir / LAST_DIR
    with atomic_dir(target, keep_previous=run_dir / PREVIOUS_LAST) as tmp:
        save_weights(tmp)
        # serialized in memory, then written by atomic_io: torch's own file writer turns a full disk into a
        # RuntimeError ("unexpected pos ..."); write_bytes makes it the one-line write refusal
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        write_bytes(tmp / OPTIMIZER_STATE, buffer.getvalue())
        if ema_save_weights is not None:
            ema_save_weights(tmp / EMA_DIR)
        write_json(tmp / TRAINER_STATE, state)
    return target


@dataclass
class LastCheckpoint:
    """Everything a resumed run starts from, read and checked (tensors on the CPU)."""

    directory: Path
    state: RunState
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    ema_weights: dict[str, torch.Tensor] | None
    fallback_note: str | None = None  # set when `last/` was damaged and this is `.last.prev/`


class DamagedCheckpoint(InputError):
    """A file of a `last/` checkpoint that cannot be resumed from. The message names the file."""

    def __init__(self, path: Path, problem: str, hint: str = RESUME_HINT):
        super().__init__(f"{path}: {problem}", hint=hint)
        self.path = path
        self.problem = problem


def find_last(path: str | Path) -> Path:
    """Resolve `--resume PATH`: a `last/` directory, or a run directory holding one (or only its previous)."""
    path = Path(path)
    for candidate in (path, path / LAST_DIR, path / PREVIOUS_LAST):
        if (candidate / TRAINER_STATE).is_file():
            return candidate
    raise InputError(f"--resume {path}: no resumable checkpoint there (expected {path}/last/{TRAINER_STATE})")


def load_last(resume: str, run_dir: Path) -> LastCheckpoint | None:
    """The checkpoint `--resume` names (`auto`: run_dir's, None when it has none), every file checked.

    A damaged `last/` falls back to `.last.prev/` beside it when that one is whole (the note says so);
    otherwise the DamagedCheckpoint says what to do.
    """
    if resume == "auto":
        try:
            last = find_last(run_dir)
        except InputError:
            return None
    else:
        last = find_last(resume)
    try:
        return read_checkpoint(last)
    except DamagedCheckpoint as damage:
        previous = last.parent / PREVIOUS_LAST
        if last.name != PREVIOUS_LAST and (previous / TRAINER_STATE).is_file():
            with contextlib.suppress(DamagedCheckpoint):
                checkpoint = read_checkpoint(previous)
                checkpoint.fallback_note = (
                    f"warning: {damage.path}: {damage.problem}; resuming from the previous complete checkpoint "
                    f"{previous} (at epoch {checkpoint.state.epoch + 1}, step {checkpoint.state.step}) instead"
                )
                return checkpoint
        best = last.parent / BEST_DIR
        raise DamagedCheckpoint(
            damage.path,
            f"{damage.problem}; no earlier complete checkpoint to fall back on"
            + (
                f" ({best} holds weights only: export or evaluate it, it cannot resume)"
                if best.is_dir()
                else ""
            ),
        ) from None


def read_checkpoint(last: Path) -> LastCheckpoint:
    """Read every file of the checkpoint directory `last`; the first damaged one is a DamagedCheckpoint."""
    try:
        state = RunState.from_json(load_trainer_state(last), last / TRAINER_STATE)
    except DamagedCheckpoint:
        raise
    except InputError as err:  # valid JSON, but not a whole trainer state
        raise DamagedCheckpoint(last / TRAINER_STATE, err.message.split(": ", 1)[-1]) from None
    weights = read_tensors(last / WEIGHTS)
    optimizer = _read_pickled_tensors(last / OPTIMIZER_STATE)
    ema = last / EMA_DIR / WEIGHTS
    ema_weights = read_tensors(ema) if (last / EMA_DIR).is_dir() else None
    return LastCheckpoint(last, state, weights, optimizer, ema_weights)


def load_trainer_state(last: Path) -> Any:
    """The JSON of `last`'s trainer_state.json (RunState.from_json checks it is one)."""
    return _read_json(last / TRAINER_STATE)


def restore_into(path: Path, load: Callable[[Any], Any], value: Any) -> None:
    """`load(value)` (an optimizer's or loss scaler's load_state_dict); a state that does not fit is damage."""
    try:
        load(value)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:
        raise DamagedCheckpoint(
            path,
            f"does not fit this run ({type(err).__name__}: {err})",
        ) from None


def _read_json(path: Path) -> Any:
    try:
        text = path.read_bytes()
        if not text.strip():
            raise DamagedCheckpoint(path, "empty (cut off while it was written)")
        return json.loads(text)
    except FileNotFoundError:
        raise DamagedCheckpoint(path, "missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedCheckpoint(path, f"not readable JSON ({err})") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise DamagedCheckpoint(path, "missing") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise DamagedCheckpoint(
            path, f"not a readable safetensors file, truncated or damaged ({err})"
        ) from None


def _read_pickled_tensors(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True: plain tensors and containers only; anything else is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DamagedCheckpoint(path, "missing") from None
    except pickle.UnpicklingError as err:
        # torch's text ends with advice to retry with weights_only=False: only the line naming the reason is kept
        reasons = [line.strip() for line in str(err).splitlines() if "nsupported" in line]
        reason = reasons[0] if reasons else str(err).splitlines()[0]
        if re.search(r"unsupported global", reason, re.IGNORECASE):
            problem = f"refused: it names code to run when loaded ({reason}); never load it"
        else:
            problem = f"not a readable optimizer state, truncated or damaged ({reason})"
        raise DamagedCheckpoint(path, problem) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DamagedCheckpoint(
            path, f"not a readable optimizer state, truncated or damaged ({first})"
        ) from None
    if not isinstance(state, dict) or not {"state", "param_groups"} <= state.keys():
        raise DamagedCheckpoint(path, "not an optimizer state (no state and param_groups)")
    return state


def kept_metric_lines(path: Path, epochs_done: int) -> tuple[list[str], str | None]:
    """metrics.jsonl's lines of the epochs a resumed run keeps, and a warning when a torn last line (a crash
    mid-write) was dropped. Any other unreadable line is a DamagedCheckpoint. No file: no lines."""
    if not path.exists():
        return [], None
    lines = [line for line in path.read_text(errors="replace").splitlines() if line]
    kept, warning = [], None
    for number, line in enumerate(lines, 1):
        try:
            epoch = json.loads(line)["epoch"]
        except (json.JSONDecodeError, KeyError, TypeError):
            if number < len(lines):
                raise DamagedCheckpoint(
                    path,
                    f"line {number} is not a metrics record",
                    hint="remove that line, or start a new --out",
                ) from None
            warning = f"warning: {path}: dropped the torn last line {number} (a crash while writing it)"
            continue
        if isinstance(epoch, int) and epoch <= epochs_done:
            kept.append(line)
    return kept, warning
