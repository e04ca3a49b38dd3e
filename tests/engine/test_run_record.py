"""run.json and `fashiondist reproduce` on real short runs of the bundled sample's images.

The runs train the notebook's `cnn` on 600 sample images (540 train, 60 val; 9 steps of 64 an epoch), so a
run takes seconds. The data comes in two forms: an IDX directory written from the sample, and the
train.csv `fashiondist data export-csv` makes of it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from fashiondist import __version__
from fashiondist.cli import main
from fashiondist.data.digest import data_digest
from fashiondist.data.idx import write_idx
from fashiondist.data.sources import load_data
from fashiondist.data.split import stratified_split
from fashiondist.engine import run_record
from fashiondist.engine.reproduce import compare_metrics, read_metrics
from fashiondist.export.exporter import export_checkpoint
from fashiondist.hardware import read_cpu
from fashiondist.run_layout import read_metrics as read_layout_metrics

REPO = Path(__file__).resolve().parents[2]
IMAGE = "fashiondist:test-image"
SHORT = ["--model", "cnn", "--batch-size", "64", "--epochs", "2", "--quiet", "--set", "eval_batch_size=256"]


@pytest.fixture(scope="module")
def forms(tmp_path_factory, sample) -> dict[str, Path]:
    """The same 600 sample images as an IDX directory and as train.csv; and that CSV with one pixel changed."""
    keep, _ = stratified_split(sample.labels, 1 - 600 / len(sample.labels), seed=1)
    root = tmp_path_factory.mktemp("forms")
    idx = root / "idx"
    idx.mkdir()
    write_idx(idx / "train-images-idx3-ubyte", sample.images[keep])
    write_idx(idx / "train-labels-idx1-ubyte", sample.labels[keep].astype("uint8"))
    assert main(["data", "export-csv", "--data", str(idx), "--out", str(root / "csv")]) == 0
    csv = root / "csv" / "train.csv"
    lines = csv.read_text().splitlines(keepends=True)
    cells = lines[5].split(",")  # row 4: Id, Label, then pixels
    cells[300] = str((int(cells[300]) + 1) % 256)
    changed = root / "changed.csv"
    changed.write_text("".join([*lines[:5], ",".join(cells), *lines[6:]]))
    return {"idx": idx, "csv": csv, "changed": changed}


def _train(data: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> Path:
    """`fashiondist train` in a child process (its own command line, environment and threads)."""
    cmd = [
        sys.executable,
        "-m",
        "fashiondist",
        "train",
        *SHORT,
        "--data",
        str(data),
        "--out",
        str(out),
        *extra,
    ]
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def run(forms, tmp_path_factory) -> Path:
    """A 2-epoch run on the IDX form, inside a (pretend) container image."""
    return _train(forms["idx"], tmp_path_factory.mktemp("runs") / "x", env={run_record.IMAGE_ENV: IMAGE})


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_run_json_records_the_command_software_machine_data_and_times(run: Path, forms):
    record = _record(run)
    env, summary = record["environment"], json.loads((run / "summary.json").read_text())
    assert record["status"] == "finished" and record["started"] <= record["finished"]
    assert record["command"][1:] == ["train", *SHORT, "--data", str(forms["idx"]), "--out", str(run)]
    assert env["fashiondist"]["version"] == __version__
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # running from this checkout
        assert env["fashiondist"]["commit"] == head.stdout.strip()
        assert isinstance(env["fashiondist"]["dirty"], bool)
    assert env["packages"]["torch"] == torch.__version__.split("+")[0]
    assert set(env["packages"]) == set(run_record.PACKAGES) and env["python"] == ".".join(
        map(str, sys.version_info[:3])
    )
    cpu = read_cpu()
    assert env["machine"]["cpu"]["model"] == cpu.model
    assert env["machine"]["cpu"]["isa"] == cpu.to_dict()["isa"]
    assert env["machine"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert len(env["machine"]["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert env["distributed"]["world_size"] == summary["world_size"] == 1
    assert env["image"] == IMAGE
    data = load_data(str(forms["idx"]))
    assert record["data"] == {
        "source": str(forms["idx"]),
        "path": str(forms["idx"].resolve()),
        "split": "train",
        "images": 600,
        "labels": 600,
        "num_classes": 10,
        "sha256": data_digest(data.images, data.labels),
    }
    assert record["seeds"]["seed"] == record["config"]["seed"] == 0
    assert record["precision"]["resolved"] == summary["precision"]
    assert record["result"]["epochs"] == 2 and record["result"]["best_val_acc"] == summary["best_val_acc"]


def test_the_digest_is_the_images_not_the_file(run: Path, forms, tmp_path: Path):
    """IDX and CSV forms of the same images agree; one changed pixel of the CSV changes the digest."""
    one_epoch = ["--epochs", "1"]
    as_csv = _record(_train(forms["csv"], tmp_path / "csv", *one_epoch))["data"]
    changed = _record(_train(forms["changed"], tmp_path / "changed", *one_epoch))["data"]
    assert as_csv["sha256"] == _record(run)["data"]["sha256"]
    assert changed["sha256"] != as_csv["sha256"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", changed["sha256"])
    assert changed["images"] == as_csv["images"] == 600


def _reproduce(run: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    """`fashiondist reproduce` in a child process (a fresh Accelerator, its own threads); its stdout."""
    cmd = [sys.executable, "-m", "fashiondist", "reproduce", str(run), "--out", str(out), *extra]
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert (out / "run.json").is_file() and (out / "metrics.jsonl").is_file()
    return proc.stdout


@pytest.mark.numerics
def test_reproduce_on_the_same_machine_is_bitwise(run: Path, tmp_path: Path):
    stdout = _reproduce(run, tmp_path / "r", "--epochs", "2")
    assert "verdict: bitwise identical over 2 epochs (same machine kind, software and settings)" in stdout


@pytest.mark.numerics
def test_reproduce_names_another_thread_count(run: Path, tmp_path: Path):
    recorded = _record(run)["environment"]["machine"]["torch_threads"]
    other = 1 if recorded != 1 else 2
    stdout = _reproduce(run, tmp_path / "r", "--epochs", "1", env={"OMP_NUM_THREADS": str(other)})
    assert (
        f"torch threads: {recorded} -> {other}" in stdout
    )  # identical or within tolerance: exit 0 either way
    # Whether another thread count changed the sums here depends on the CPU's kernels: read it from the two
    # metrics files, and the verdict must say the same.
    first, again = read_layout_metrics(run)[0], read_layout_metrics(tmp_path / "r")[0]
    keys = ("step", "val_count", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
    if all(first[k] == again[k] for k in keys):
        assert "verdict: bitwise identical over 1 epoch (although" in stdout
    else:
        assert "verdict: differs over 1 epoch" in stdout


@pytest.mark.numerics
def test_reproduce_names_another_precision(run: Path, tmp_path: Path):
    recorded = _record(run)["precision"]["resolved"]
    other = "no" if recorded == "bf16" else "bf16"
    stdout = _reproduce(run, tmp_path / "r", "--epochs", "1", "--set", f"precision={other}")
    assert "verdict: differs over 1 epoch" in stdout and "within the tolerance" in stdout
    assert f"precision: {recorded} -> {other}" in stdout
    assert f"config precision: 'auto' -> '{other}'" in stdout
    rerun = _first_epoch_diffs(run, tmp_path / "r")
    assert {d.metric for d in rerun if d.max_abs_diff == 0} >= {"step", "val_count", "lr"}
    assert any(d.max_abs_diff > 0 for d in rerun)


def _first_epoch_diffs(run: Path, rerun: Path):
    first = read_metrics(run)[:1]
    return compare_metrics(first, read_metrics(rerun))


def _refused(argv: list[str], capsys, *expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fashiondist: error: "), err
    for text in expected:
        assert text in err


def test_reproduce_refuses_other_data_and_bad_options(forms, tmp_path: Path, capsys):
    data = tmp_path / "train.csv"
    data.write_bytes(forms["csv"].read_bytes())
    csv_run = _train(data, tmp_path / "x", "--epochs", "1")
    data.write_bytes(forms["changed"].read_bytes())  # one pixel differs from what the run saw
    out = tmp_path / "again"
    _refused(["reproduce", str(csv_run), "--out", str(out)], capsys, "not the data this run was trained on")
    assert not out.exists()
    _refused(["reproduce", str(csv_run), "--epochs", "2"], capsys, "records epochs 1 to 1")
    _refused(["reproduce", str(csv_run), "--out", str(csv_run)], capsys, "not empty")
    _refused(["reproduce", str(tmp_path)], capsys, "run.json: no such file")


def test_evaluate_report_and_export_carry_the_record(run: Path, tmp_path: Path, capsys):
    record = _record(run)
    assert main(["evaluate", str(run)]) == 0
    stdout = capsys.readouterr().out
    assert "how the run was made (run.json)" in stdout and record["data"]["sha256"] in stdout
    assert record["data"]["sha256"] in (run / "report.html").read_text()

    model = tmp_path / "model.onnx"
    export_checkpoint(run / "best", model, images=load_data("sample").images[:64])
    props = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert props["data_sha256"] == record["data"]["sha256"]
    package = record["environment"]["fashiondist"]
    expected = package["commit"] + ("-dirty" if package["dirty"] else "") if package["commit"] else None
    assert props["run_commit"] == (expected or f"unknown ({package['note']})")
    assert {"fashiondist_version", "model", "num_classes", "class_names", "val_accuracy"} <= props.keys()


def test_git_state_without_a_checkout_or_without_git(tmp_path: Path, monkeypatch):
    assert run_record.git_state(tmp_path)["note"].startswith("not running from a git checkout")
    (tmp_path / ".git").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on it
    state = run_record.git_state(tmp_path)
    assert state == {"commit": None, "dirty": None, "note": "a git checkout, but git is not installed"}
