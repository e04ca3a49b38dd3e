"""What a run directory's readers refuse (issue 23, items 10, 11, 13): a hand-edited run.json is one line
naming the key, before `reproduce` trains or `evaluate` reports; a resume that would change the data split,
the optimizer or the model is one line naming the key (a changed accumulation continues); a non-finite loss
names a checkpoint only when there is one, and advises bf16 only to a run in fp16.

One real 1-epoch run on sample images is trained once; each case edits a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mounts import tmpfs

from fashiondist.cli import main
from fashiondist.engine.run_checkpoint import non_finite_loss


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_csv, tiny_train, fresh_accelerate) -> Path:
    run = tmp_path_factory.mktemp("refusals") / "run"
    assert main(["train", *tiny_train, "--epochs", "1", "--data", str(tiny_csv), "--out", str(run)]) == 0
    assert (run / "last").is_dir() and (run / "run.json").is_file()
    return run


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _copy(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fashiondist: error: ") and "Traceback" not in err, err
    return err


# --- run.json: one validating reader ---------------------------------------------------------------------


def _drop(*path: str):
    def edit(record: dict) -> None:
        for key in path[:-1]:
            record = record[key]
        del record[path[-1]]

    return edit


def _set(value, *path: str):
    def edit(record: dict) -> None:
        for key in path[:-1]:
            record = record[key]
        record[path[-1]] = value

    return edit


EDITS = [
    pytest.param(_drop("variants"), "no 'variants'", id="no-variants"),
    pytest.param(_drop("environment"), "no 'environment'", id="no-environment"),
    pytest.param(_drop("seeds"), "no 'seeds'", id="no-seeds"),
    pytest.param(_set("sample", "data"), "'data' is str, expected dict", id="data-as-string"),
    pytest.param(_drop("environment", "machine", "cpu"), "no 'environment.machine.cpu'", id="no-cpu"),
    pytest.param(_set("3", "environment", "machine", "torch_threads"), "'environment.machine.torch_threads'", id="threads-as-text"),
    pytest.param(_set(None, "config"), "expected either 'config'", id="neither-config-nor-variants"),
    pytest.param(_drop("precision", "resolved"), "no 'precision.resolved'", id="no-precision"),
    pytest.param(_set(True, "data", "images"), "'data.images' is bool", id="bool-count"),
]  # fmt: skip


@pytest.mark.parametrize("edit,problem", EDITS)
def test_reproduce_refuses_a_hand_edited_record_before_training(trained, tmp_path, capsys, edit, problem):
    run = _copy(trained, tmp_path)
    record = json.loads((run / "run.json").read_text())
    edit(record)
    (run / "run.json").write_text(json.dumps(record))
    assert main(["reproduce", str(run), "--epochs", "1"]) == 2
    err = _one_line(capsys)
    assert f"{run / 'run.json'}: not a complete run record ({problem}" in err, err
    assert not (tmp_path / "run-reproduce").exists()  # nothing trained, nothing written
    assert main(["evaluate", str(run)]) == 2  # the same reader
    assert problem in _one_line(capsys)


def test_reproduce_out_a_file(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("keep")
    assert main(["reproduce", str(run), "--out", str(afile)]) == 2
    assert "is a file, not a directory" in _one_line(capsys)
    assert afile.read_text() == "keep"


# --- resume ----------------------------------------------------------------------------------------------


def _resume_argv(tiny_train: list[str], tiny_csv, run) -> list[str]:
    """`train` resuming `run` for a second epoch, with the options it was trained with."""
    return [
        "train",
        *tiny_train,
        "--epochs",
        "2",
        "--data",
        str(tiny_csv),
        "--out",
        str(run),
        "--resume",
        "auto",
    ]


@pytest.mark.parametrize(
    "flags,key",
    [
        (["--val-fraction", "0.2"], "val_fraction"),
        (["--seed", "1"], "seed"),
        (["--optimizer", "sgd"], "optimizer"),  # the cnn recipe trains with adam
        (["--batch-size", "32"], "batch_size"),
        (["--data", "sample"], "data"),
        (["--model", "convnet"], "model"),
    ],
)
def test_resume_refuses_a_change_of_split_optimizer_or_model(
    trained, tiny_csv, tiny_train, tmp_path, capsys, flags, key
):
    run = _copy(trained, tmp_path)
    before = _snapshot(run)
    argv = _resume_argv(tiny_train, tiny_csv, run)
    code = main([*argv, *flags])  # a later flag wins
    err = _one_line(capsys)
    assert code == 2 and f"the checkpoint has {key}=" in err and f"resume with the same {key}" in err, err
    assert _snapshot(run) == before


def test_resume_across_a_changed_accumulation_continues(trained, tiny_csv, tiny_train, tmp_path):
    run = _copy(trained, tmp_path)
    argv = _resume_argv(tiny_train, tiny_csv, run)
    assert main([*argv, "--grad-accum", "2"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_resume_of_a_checkpoint_without_recorded_keys_reads_its_config(
    trained, tiny_csv, tiny_train, tmp_path, capsys
):
    """A checkpoint written before trainer_state.json kept the keys: its run's config.yaml decides."""
    run = _copy(trained, tmp_path)
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    state.pop("resume_keys")
    (run / "last" / "trainer_state.json").write_text(json.dumps(state))
    argv = _resume_argv(tiny_train, tiny_csv, run)
    assert main([*argv, "--seed", "7"]) == 2
    assert "the checkpoint has seed=0" in _one_line(capsys)


# --- messages ----------------------------------------------------------------------------------------------


def test_non_finite_loss_message_names_only_what_exists(tmp_path):
    no_run = non_finite_loss("cnn", 3, 1, None, "bf16")
    assert "no checkpoint was saved before it" in str(no_run) and "last good" not in str(no_run)
    assert "bf16 instead of fp16" not in str(no_run)
    (tmp_path / "last").mkdir()
    assert "no checkpoint was saved" in str(non_finite_loss("cnn", 3, 2, tmp_path, "no"))  # no trainer state
    (tmp_path / "last" / "trainer_state.json").write_text("{}")
    saved = non_finite_loss("cnn", 3, 2, tmp_path, "fp16")
    assert f"the last good checkpoint is {tmp_path / 'last'}" in str(saved)
    assert "bf16 instead of fp16" in str(saved)


def test_a_bf16_run_that_diverges_at_once(tiny_csv, tmp_path):
    """A real run, bf16, non-finite in its first epoch: no checkpoint named, no advice to use bf16."""
    out = tmp_path / "nan"
    argv = ["--model", "cnn", "--batch-size", "64", "--quiet", "--epochs", "1", "--lr", "1e30"]
    proc = subprocess.run(
        [sys.executable, "-m", "fashiondist", "train", *argv, "--precision", "bf16", "--data", str(tiny_csv), "--out", str(out)],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "non-finite loss" in line, proc.stderr[-2000:]
    assert "no checkpoint was saved before it" in line and "last good" not in line
    assert "bf16 instead of fp16" not in line


# --- a full disk while training -----------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_train_on_a_full_disk_is_one_line(tiny_csv, tiny_train, tmp_path, capsys):
    """The checkpoint does not fit a 1 MB tmpfs: exit 2 and one line, not torch's 'unexpected pos' error."""
    with tmpfs(tmp_path / "small", "1m") as small:
        code = main(
            ["train", *tiny_train, "--epochs", "1", "--data", str(tiny_csv), "--out", str(small / "run")]
        )
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and err.startswith("fashiondist: error: ") and "No space left on device" in err, err
        assert not [p for p in small.rglob("*") if ".tmp" in p.name]  # no temp file or directory left


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only mount needs root (CI runs as root)")
def test_evaluate_and_reproduce_a_read_only_run(trained, tmp_path, capsys):
    """A run on a read-only file system: `evaluate` (which writes its report into the run) and `reproduce`
    (whose default output sits beside it) are one line each, exit 2; the run is untouched."""
    with tmpfs(tmp_path / "ro", "16m") as ro:
        run = ro / "run"
        shutil.copytree(trained, run)
        before = _snapshot(run)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        assert main(["evaluate", str(run)]) == 2
        assert "Read-only file system" in _one_line(capsys).replace("\n", "")
        assert main(["reproduce", str(run)]) == 2
        assert "Read-only file system" in _one_line(capsys)
        assert _snapshot(run) == before


def test_train_test_csv_is_not_the_submission(tiny_csv, tiny_train, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    test = out / "submission.csv"
    shutil.copy(tiny_csv, test)
    before = test.read_bytes()
    code = main(
        [
            "train",
            *tiny_train,
            "--epochs",
            "1",
            "--data",
            str(tiny_csv),
            "--out",
            str(out),
            "--test",
            str(test),
        ]
    )
    assert code == 2 and "is the --test CSV" in _one_line(capsys)
    assert test.read_bytes() == before and not (out / "run.json").exists()  # refused before training
