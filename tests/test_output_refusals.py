"""Nothing lost, nothing clobbered (issue 23, items 1-4): every write refuses, before any work, an output that
is not a regular file or a new path, or that is one of the command's own inputs or inside a run directory it
reads; a write the file system refuses (full, read-only) is one line, exit 2, the old file intact.

Decided: a symlink as an output file is refused, whatever it points to (the rename would replace the link).
Root-only cases (device nodes, a tiny tmpfs that fills, a read-only remount) skip with the reason elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from mounts import tmpfs

from fashiondist.atomic_io import atomic_write, write_bytes, write_text
from fashiondist.cli import main
from fashiondist.config import TrainConfig, save_yaml
from fashiondist.errors import InputError
from fashiondist.output_paths import check_output_file

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="device nodes and mounts need root (CI runs as root)")


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("fashiondist: error: "), err
    assert "Traceback" not in err
    return err


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _symlink(path: Path) -> Path:
    target = path.with_name("target.csv")
    target.write_text("precious\n")
    path.symlink_to(target)
    return path


def _socket(path: Path) -> Path:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return path


def _char_device(path: Path) -> Path:
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the numbers of /dev/null
    return path


SPECIAL = [
    pytest.param(_fifo, "a FIFO (named pipe)", id="fifo"),
    pytest.param(_symlink, "a symbolic link", id="symlink"),
    pytest.param(_socket, "a socket", id="socket"),
    pytest.param(_char_device, "a character device", id="char-device", marks=needs_root),
]


def _kind(path: Path) -> int:
    return stat.S_IFMT(path.lstat().st_mode)


@pytest.mark.parametrize("make,kind", SPECIAL)
def test_check_output_file_refuses_what_is_not_a_regular_file(make, kind, tmp_path: Path):
    out = make(tmp_path / "out.csv")
    before = _kind(out)
    with pytest.raises(InputError, match=re.escape(f"--out {out}: is {kind}, not a regular file")):
        check_output_file(out, "--out")
    assert _kind(out) == before


@pytest.mark.parametrize("make,kind", SPECIAL)
def test_atomic_write_never_replaces_a_special_file(make, kind, tmp_path: Path):
    """The last line of defence, for writes no command checked: a rename would replace the node."""
    out = make(tmp_path / "out.csv")
    before = _kind(out)
    with pytest.raises(InputError, match="exists and is not a regular file"):
        write_text(out, "x")
    assert _kind(out) == before
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("make,kind", SPECIAL)
def test_infer_out_special_file_is_one_line(make, kind, onnx_model, sample_test_csv, tmp_path, capsys):
    out = make(tmp_path / "submission.csv")
    before = _kind(out)
    code = main(["infer", str(sample_test_csv), "--model", str(onnx_model), "--out", str(out)])
    err = _one_line(capsys.readouterr().err)
    assert code == 2 and f"is {kind}, not a regular file" in err
    assert _kind(out) == before


def test_a_regular_file_and_a_new_path_are_fine(tmp_path: Path):
    existing = tmp_path / "old.csv"
    existing.write_text("old")
    assert check_output_file(existing, "--out") == existing
    assert check_output_file(tmp_path / "new.csv", "--out") == tmp_path / "new.csv"


# --- the command's own inputs -----------------------------------------------------------------------------


def test_infer_out_is_its_own_model_or_csv(onnx_model, sample_test_csv, tmp_path, capsys):
    model = tmp_path / "m.onnx"
    shutil.copy(onnx_model, model)
    csv = tmp_path / "testX.csv.gz"
    shutil.copy(sample_test_csv, csv)
    link = tmp_path / "hardlink.onnx"
    os.link(model, link)
    before = model.read_bytes()
    for out in (model, tmp_path / "sub" / ".." / "m.onnx", link, csv):
        (tmp_path / "sub").mkdir(exist_ok=True)
        code = main(["infer", str(csv), "--model", str(model), "--out", str(out)])
        err = _one_line(capsys.readouterr().err)
        assert code == 2 and ("is the model;" in err or "is the input CSV;" in err), err
    assert model.read_bytes() == before


@pytest.fixture
def fake_run(model_dir: Path, tmp_path: Path) -> Path:
    """A run directory as training leaves it: config.yaml, run.json, best/ and last/ (copies of real weights)."""
    run = tmp_path / "run"
    run.mkdir()
    save_yaml(TrainConfig(model="cnn"), run / "config.yaml")
    (run / "run.json").write_text('{"format": 1}\n')
    (run / "metrics.jsonl").write_text("")
    shutil.copytree(model_dir, run / "best")
    shutil.copytree(model_dir, run / "last")
    return run


@pytest.mark.parametrize(
    "checkpoint,out",
    [
        ("", "last/model.safetensors"),
        ("", "run.json"),
        ("", "config.yaml"),
        ("best", "best/model.safetensors"),
        ("best/model.safetensors", "best/model.safetensors"),
        ("", "last/new.onnx"),
        ("best", "metrics.jsonl"),
    ],
)
def test_export_out_inside_the_run_it_reads(fake_run: Path, checkpoint: str, out: str, capsys):
    before = {p: p.read_bytes() for p in fake_run.rglob("*") if p.is_file()}
    code = main(["export", str(fake_run / checkpoint), "--out", str(fake_run / out)])
    err = _one_line(capsys.readouterr().err)
    assert code == 2 and ("own input" in err or "inside the run directory" in err), err
    assert {p: p.read_bytes() for p in fake_run.rglob("*") if p.is_file()} == before


def test_reproduce_out_a_file_or_inside_the_run(fake_run: Path, tmp_path: Path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for out, problem in (
        (afile, "is a file, not a directory"),
        (fake_run / "again", "inside the run directory"),
    ):
        code = main(["reproduce", str(fake_run), "--out", str(out)])
        err = _one_line(capsys.readouterr().err)
        assert code == 2 and problem in err, err
    assert afile.read_text() == "keep"


def test_data_export_csv_onto_its_own_source(tmp_path: Path, capsys):
    from fashiondist.data.csvio import read_competition_csv, write_competition_csv
    from fashiondist.data.sources import load_data

    test = load_data("sample", split="test")
    source = tmp_path / "testX.csv"
    write_competition_csv(source, test.ids[:5], test.images[:5])
    before = source.read_bytes()
    code = main(["data", "export-csv", "--data", str(source), "--out", str(tmp_path)])
    err = _one_line(capsys.readouterr().err)
    assert code == 2 and "own input" in err
    assert source.read_bytes() == before and len(read_competition_csv(source)) == 5


# --- the file system refuses: full, read-only -------------------------------------------------------------


@needs_root
def test_disk_full_is_one_error_and_the_old_file_stays(tmp_path: Path):
    with tmpfs(tmp_path / "small", "64k") as small:
        target = small / "model.onnx"
        write_bytes(target, b"old model")
        with pytest.raises(InputError, match=r"model.onnx: cannot write \(No space left on device\)"):
            write_bytes(target, os.urandom(256 * 1024))
        assert target.read_bytes() == b"old model"
        assert [p.name for p in small.iterdir()] == ["model.onnx"]  # no temp file left


@needs_root
def test_infer_probs_on_a_full_disk(onnx_model, sample_test_csv, tmp_path: Path, capsys):
    with tmpfs(tmp_path / "small", "32k") as small:
        out = small / "probs.csv"
        code = main(["infer", str(sample_test_csv), "--model", str(onnx_model), "--probs", "--out", str(out)])
        err = _one_line(capsys.readouterr().err)
        assert code == 2 and "No space left on device" in err, err
        assert list(small.iterdir()) == []


@needs_root
def test_read_only_mid_write_the_cleanup_does_not_hide_the_error(tmp_path: Path, monkeypatch):
    """The file system turns read-only between the temp file and the rename: the rename fails with EROFS, the
    temp file cannot be removed either, and the error raised is the write's, as one InputError."""
    with tmpfs(tmp_path / "ro", "1m") as ro:
        target = ro / "run.json"
        write_text(target, "old")
        real_replace = os.replace

        def remount_then_replace(
            src, dst
        ):  # the temp file is written and closed; then the mount turns read-only
            subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
            real_replace(src, dst)

        monkeypatch.setattr("fashiondist.atomic_io.os.replace", remount_then_replace)
        refused = pytest.raises(InputError, match=r"run.json: cannot write \(Read-only file system\)")
        with refused, atomic_write(target) as handle:
            handle.write(b"new")
        assert target.read_text() == "old"


@needs_root
def test_read_only_run_directory_evaluate_is_one_line(fake_run: Path, tmp_path: Path, capsys):
    """`evaluate --data` into a read-only place, and `reproduce` whose default output sits beside a
    read-only run: one line each, exit 2."""
    with tmpfs(tmp_path / "ro", "1m") as ro:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        code = main(["evaluate", str(fake_run / "best"), "--data", "sample", "--out", str(ro / "eval")])
        err = _one_line(capsys.readouterr().err)
        assert code == 2 and "Read-only file system" in err, err


# --- one line, whatever the path holds ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["new\nline.csv", "tab\there.csv", "esc\x1b[2J.csv", "ret\rurn.csv"])
def test_a_control_character_in_a_path_stays_on_one_line(name, onnx_model, tmp_path: Path, capsys):
    code = main(["infer", str(tmp_path / name), "--model", str(onnx_model), "--out", str(tmp_path / "s.csv")])
    err = _one_line(capsys.readouterr().err)
    assert code == 2 and "file not found" in err
    assert name.encode("unicode_escape").decode() in err


def test_option_errors_read_like_every_other_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["infer", "x.csv"])  # --model missing
    err = _one_line(capsys.readouterr().err)
    assert stop.value.code == 2
    assert err.startswith("fashiondist: error: the following arguments are required: --model")
    assert "see `fashiondist infer --help`" in err
