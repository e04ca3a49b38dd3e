"""How a student run starts and is taught: `--init RUN` (another run's weights as the start, and its refusals)
and `distill_augmented` (the teacher predicts every batch the student trains on)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from launched import REPO, accelerate, free_port, learned_parameters, run_ok

from fashiondist.cli import main
from fashiondist.run_layout import TEACHER_FILE

TINY = ["--model", "convnet", "--batch-size", "64", "--epochs", "1", "--quiet", "--precision", "no"]


def _train(*args: str, launcher: tuple[str, ...] = (sys.executable, "-m")) -> subprocess.CompletedProcess:
    return run_ok([*launcher, "fashiondist", "train", *TINY, *args])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_csv) -> Path:
    out = tmp_path_factory.mktemp("init") / "base"
    _train("--data", str(tiny_csv), "--out", str(out), "--seed", "3")
    return out


def test_a_run_starts_from_the_init_runs_weights(base_run, tiny_csv, tmp_path):
    # another seed, so that without --init the start would be other random weights; a learning rate of 1e-12
    # moves no parameter by more than ~1e-11 in one epoch, while two random starts differ by ~0.1
    tuned, fresh = tmp_path / "tuned", tmp_path / "fresh"
    common = ("--data", str(tiny_csv), "--seed", "5", "--lr", "1e-12")
    _train(*common, "--out", str(tuned), "--init", str(base_run))
    _train(*common, "--out", str(fresh))
    start, got, other = learned_parameters(base_run), learned_parameters(tuned), learned_parameters(fresh)
    assert got.keys() == start.keys()
    assert all((got[k] - start[k]).abs().max() < 1e-6 for k in start)
    assert any((other[k] - start[k]).abs().max() > 1e-3 for k in start)
    config = json.loads((tuned / "run.json").read_text())["config"]
    assert config["init"] == str(base_run)


def _refused(tiny_csv, tmp_path, capsys, init: Path | str, *extra: str) -> str:
    """Train with `--init init` in this process: exit 2, one error line and no traceback, nothing written;
    returns that line."""
    args = [
        "train",
        *TINY,
        "--data",
        str(tiny_csv),
        "--out",
        str(tmp_path / "r"),
        "--init",
        str(init),
        *extra,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "r" / "best").exists()
    return err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "cnn"], "the saved model has model 'convnet', this run 'cnn'"),
        (["--set", "model_kwargs.width=0.5"], "the saved model has model_kwargs {}, this run {'width': 0.5}"),
    ],
)
def test_init_from_another_model_is_one_line_and_exit_2(
    base_run, tiny_csv, tmp_path, capsys, extra, message, fresh_accelerate
):
    assert f"--init {base_run}: {message}" in _refused(tiny_csv, tmp_path, capsys, base_run, *extra)


def test_init_from_a_missing_run_is_one_line_and_exit_2(tiny_csv, tmp_path, capsys, fresh_accelerate):
    assert "/nonexistent/run" in _refused(tiny_csv, tmp_path, capsys, "/nonexistent/run")


def test_init_from_a_damaged_model_is_one_line_and_exit_2(
    base_run, tiny_csv, tmp_path, capsys, fresh_accelerate
):
    damaged = tmp_path / "damaged"
    shutil.copytree(base_run / "best", damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    assert f"{weights}: not a readable safetensors file" in _refused(tiny_csv, tmp_path, capsys, damaged)


def _student(tiny_csv, out: Path, teacher: Path, *extra: str, **launcher) -> subprocess.CompletedProcess:
    args = ["--data", str(tiny_csv), "--out", str(out), "--seed", "5", "--teacher", str(teacher)]
    return _train(*args, "--set", "distill_temperature=2", "--set", "distill_weight=0.7", *extra, **launcher)


def test_an_augmented_teacher_predicts_the_batches_the_student_sees(base_run, tiny_csv, tmp_path):
    # Without augmentation the batches are the clean images, so a teacher that predicts every batch gives the
    # cached teacher's targets (float32, the same members, no TTA), and the two students train alike. With
    # augmentation the live teacher predicts other images (flipped, shifted, erased) and the students part.
    plain = ("--set", "augment=false")
    cached = _student(tiny_csv, tmp_path / "cached", base_run, *plain)
    live = _student(tiny_csv, tmp_path / "live", base_run, *plain, "--set", "distill_augmented=true")
    assert "cached in" in cached.stderr and (tmp_path / "cached" / TEACHER_FILE).is_file()
    assert "predict every augmented batch" in live.stderr and not (tmp_path / "live" / TEACHER_FILE).exists()
    a, b = learned_parameters(tmp_path / "cached"), learned_parameters(tmp_path / "live")
    # the teacher's float32 probabilities differ by a few roundings between its batch of 1024 and the student's
    # of 64; the five SGD steps carry that to ~1e-6 of the weights (2e-6 on an Intel Xeon), while teaching on
    # other images moves them by ~0.1 (0.17 there): 1e-3 between the two, far from both
    assert all((a[k] - b[k]).abs().max() < 1e-3 for k in a)
    _student(tiny_csv, tmp_path / "aug-cached", base_run)
    _student(tiny_csv, tmp_path / "aug-live", base_run, "--set", "distill_augmented=true")
    c, d = learned_parameters(tmp_path / "aug-cached"), learned_parameters(tmp_path / "aug-live")
    assert any((c[k] - d[k]).abs().max() > 1e-2 for k in c)
    config = json.loads((tmp_path / "live" / "run.json").read_text())["config"]
    assert config["distill_augmented"] is True


@pytest.mark.ddp
@pytest.mark.parametrize("augmented", ["true", "false"])
def test_two_ranks_teach_and_start_a_student_as_one_process_does(base_run, tiny_csv, tmp_path, augmented):
    # cnn has no BatchNorm or dropout, and the teacher runs in eval mode: each rank's teacher predicts its half
    # of the batch as one process predicts the whole (or every rank reads the one cached file), and DDP's mean
    # of the two halves' gradients is the whole batch's up to summation order, so both runs start from one
    # cnn and follow one trajectory: measured 1e-7 apart (Intel Xeon), where teaching on other images put two
    # students 0.17 apart (the test above)
    start = tmp_path / "start"
    _train("--data", str(tiny_csv), "--out", str(start), "--model", "cnn")
    student = ("--model", "cnn", "--init", str(start), "--set", f"distill_augmented={augmented}")
    _student(tiny_csv, tmp_path / "one", base_run, *student)
    config = str(REPO / "launch/accelerate/cpu_ddp.yaml")
    launcher = (*accelerate("--config_file", config, "--main_process_port", str(free_port())), "-m")
    proc = _student(tiny_csv, tmp_path / "two", base_run, *student, launcher=launcher)
    assert "32 per device x 1 accumulation x 2 process(es)" in proc.stderr
    one, two = learned_parameters(tmp_path / "one"), learned_parameters(tmp_path / "two")
    assert all((one[k] - two[k]).abs().max() < 1e-4 for k in one)
