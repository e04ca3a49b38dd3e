"""`infer --model RUN_DIR`: the run's int8 model where its accuracy gate kept one and the CPU has int8 dot
products (VNNI, AMX), else model.onnx; `--fp32` keeps fp32; a file is run as given."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fashiondist.cli import main
from fashiondist.errors import InputError
from fashiondist.inference.choice import choose_model


@pytest.fixture
def run_dir(onnx_model: Path, tmp_path: Path) -> Path:
    """A run directory as the main job leaves it: model.onnx, and model.int8.onnx when int8 was accepted
    (here the fp32 file under the int8 name: the choice reads the directory, not the graph)."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(onnx_model, run / "model.onnx")
    return run


def test_int8_only_where_accepted_and_fast(run_dir: Path):
    assert choose_model(run_dir, flags=["avx512_vnni"]).path == run_dir / "model.onnx"  # none accepted
    shutil.copy(run_dir / "model.onnx", run_dir / "model.int8.onnx")
    chosen = choose_model(run_dir, flags=["avx512_vnni", "amx_int8"])
    assert chosen.path == run_dir / "model.int8.onnx" and "avx512_vnni+amx_int8" in chosen.reason
    assert choose_model(run_dir, flags=[]).path == run_dir / "model.onnx"  # AVX2 only: fp32
    assert choose_model(run_dir, fp32=True, flags=["amx_int8"]).path == run_dir / "model.onnx"
    assert choose_model(run_dir / "model.onnx", flags=["amx_int8"]).path == run_dir / "model.onnx"


def test_a_directory_without_a_model_is_one_error(tmp_path: Path):
    with pytest.raises(InputError, match=r"--model .*: a directory without model\.onnx"):
        choose_model(tmp_path)


def test_infer_on_a_run_directory_says_which_model(
    run_dir: Path, sample_test_csv: Path, tmp_path: Path, capsys
):
    out = tmp_path / "submission.csv"
    argv = ["infer", str(sample_test_csv), "--model", str(run_dir), "--out", str(out), "--provider", "cpu"]
    assert main([*argv, "--fp32"]) == 0
    assert "model.onnx: fp32: the run has no accepted int8 model" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 1001
    shutil.copy(run_dir / "model.onnx", run_dir / "model.int8.onnx")
    assert main([*argv, "--fp32"]) == 0
    assert "model.onnx: fp32: --fp32" in capsys.readouterr().err
