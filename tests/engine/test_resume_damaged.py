"""Resuming from a damaged checkpoint: one line naming the file and what to do (exit 2, no traceback, the run
directory untouched), or a fallback to `.last.prev/` that says so; a torn last metrics line is dropped with a
warning; a stray `.last.tmp-*` from a crash mid-save is removed by the next run.

One real 2-epoch run on sample images is trained once; each case damages a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from fashiondist.cli import main


class _RunsCode:
    """Unpickling this would run a shell command: weights_only loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/fashiondist-pwned",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_csv, tiny_train, fresh_accelerate) -> tuple[Path, Path, list[str]]:
    """(a 2-epoch run directory with last/, .last.prev/ and best/, its train.csv, the train options)."""
    root, data = tmp_path_factory.mktemp("resume"), tiny_csv
    assert main(["train", *tiny_train, "--epochs", "2", "--data", str(data), "--out", str(root / "run")]) == 0
    assert (
        (root / "run/last").is_dir() and (root / "run/.last.prev").is_dir() and (root / "run/best").is_dir()
    )
    return root / "run", data, tiny_train


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _copy(trained, tmp_path: Path, keep_previous: bool = False) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    if not keep_previous:
        shutil.rmtree(run / ".last.prev")
    return run


def _resume(run: Path, trained, capsys, *extra: str) -> tuple[int, str]:
    _, data, tiny_train = trained
    code = main(["train", *tiny_train, "--epochs", "3", "--data", str(data), "--out", str(run), *extra])
    return code, capsys.readouterr().err


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage\xff" * 10)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _state_without_model(path: Path) -> None:
    state = json.loads(path.read_text())
    del state["model"]
    path.write_text(json.dumps(state))


def _state_with_text_epoch(path: Path) -> None:
    state = json.loads(path.read_text())
    state["epoch"] = "two"
    path.write_text(json.dumps(state))


def _malicious(path: Path) -> None:
    torch.save({"state": _RunsCode(), "param_groups": []}, path)


def _other_optimizer(path: Path) -> None:
    torch.save({"state": {}, "param_groups": []}, path)


CASES = {
    "truncated weights": (
        "model.safetensors",
        _truncate,
        "not a readable safetensors file, truncated or damaged",
    ),
    "garbage state": ("trainer_state.json", _garbage, "not readable JSON"),
    "empty state": ("trainer_state.json", _empty, "empty (cut off while it was written)"),
    "state missing keys": (
        "trainer_state.json",
        _state_without_model,
        "not a fashiondist trainer state (no model)",
    ),
    "state of wrong type": (
        "trainer_state.json",
        _state_with_text_epoch,
        "not a fashiondist trainer state (epoch is 'two')",
    ),
    "garbage optimizer": ("optimizer.pt", _garbage, "not a readable optimizer state, truncated or damaged"),
    "missing optimizer": ("optimizer.pt", Path.unlink, "missing"),
    "malicious pickle": (
        "optimizer.pt",
        _malicious,
        "refused: it names code to run when loaded (Trying to load unsupported GLOBAL posix.system",
    ),
    "optimizer of another run": ("optimizer.pt", _other_optimizer, "does not fit this run"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("resume", ["auto", "last"])
def test_a_damaged_last_is_one_line_naming_the_file(trained, tmp_path, capsys, case, resume):
    run = _copy(trained, tmp_path)
    name, damage, problem = CASES[case]
    damage(run / "last" / name)
    before = _snapshot(run)
    code, err = _resume(run, trained, capsys, "--resume", "auto" if resume == "auto" else str(run / "last"))
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"fashiondist: error: {run / 'last' / name}: {problem}"), err
    assert "weights_only" not in err
    if case != "optimizer of another run":  # read whole, it fails only when loaded into this run's optimizer
        assert "no earlier complete checkpoint to fall back on" in err
        assert f"({run / 'best'} holds weights only: export or evaluate it, it cannot resume)" in err
    assert "resume from another checkpoint, or rerun without --resume to start again" in err
    assert _snapshot(run) == before, "a refused resume changes nothing in the run directory"
    assert not Path("/tmp/fashiondist-pwned").exists()


def test_a_damaged_last_falls_back_to_the_previous_checkpoint(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path, keep_previous=True)
    _truncate(run / "last/model.safetensors")
    code, err = _resume(run, trained, capsys, "--resume", "auto")
    assert code == 0, err
    assert f"warning: {run / 'last/model.safetensors'}: not a readable safetensors file" in err
    assert f"resuming from the previous complete checkpoint {run / '.last.prev'} (at epoch 2, step" in err
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3], "epoch 2 trained again from the epoch-1 checkpoint, then epoch 3"


def test_a_torn_last_metrics_line_is_dropped_and_a_stray_temp_dir_removed(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 3, "step": 2')  # killed while writing the line
    (run / ".last.tmp-x1y2").mkdir()
    (run / ".last.tmp-x1y2/model.safetensors").write_bytes(b"half")
    code, err = _resume(run, trained, capsys, "--resume", "auto")
    assert code == 0, err
    assert f"warning: {run / 'metrics.jsonl'}: dropped the torn last line 3" in err
    assert f"removed {run / '.last.tmp-x1y2'}" in err and not (run / ".last.tmp-x1y2").exists()
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_a_torn_metrics_line_before_the_last_is_one_error(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0][:20] + "\n" + lines[1] + "\n")
    code, err = _resume(run, trained, capsys, "--resume", "auto")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"fashiondist: error: {run / 'metrics.jsonl'}: line 1 is not a metrics record")
    assert err.rstrip().endswith("(hint: remove that line, or start a new --out)"), err
