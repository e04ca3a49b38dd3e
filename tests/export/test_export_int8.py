"""int8 static quantization: kept when accuracy holds, refused (float model kept, no int8 file) when it drops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from trained_models import SampleSplit

from fashiondist.cli import main
from fashiondist.export.exporter import REPORT_NAME, export_checkpoint
from fashiondist.export.quantize import short_convs
from fashiondist.inference.session import open_session

# Numerics-sensitive: CI runs this module again under AVX-512 (no AMX) and AVX2 kernel holds (.ci/run).
pytestmark = pytest.mark.numerics

CALIBRATION = 4096  # training images for calibration, as `fashiondist export` takes them


def test_int8_kept_when_accuracy_holds(trained_run: Path, split: SampleSplit, tmp_path: Path):
    out = tmp_path / "model.onnx"
    report = export_checkpoint(
        trained_run,
        out,
        images=split.val_images,
        labels=split.val_labels,
        calibration_images=split.train_images[:CALIBRATION],
        quantize="int8",
    )
    q = report.int8
    assert q.accepted and report.int8_refusal is None
    assert q.fp32_accuracy > 0.6  # a real, trained model: the gate compares real accuracies
    assert q.drop_points <= 0.5
    assert q.images == len(split.val_images) and q.calibration_images == CALIBRATION
    assert q.file_bytes < 0.5 * report.file_bytes  # int8 weights

    int8 = open_session(tmp_path / "model.int8.onnx", "cpu")  # keeps the contract
    assert int8.metadata["quantization"].startswith("int8 static QDQ")
    assert int8.metadata["model"] == "cnn"
    probs = int8.predict_proba(split.val_images.reshape(-1, 1, 28, 28))
    # the same session's argmaxes counted the same way (a ratio of integers, correctly rounded): exact
    assert float(np.mean(probs.argmax(1) == split.val_labels)) == q.int8_accuracy
    assert len(np.unique(probs)) > 1000  # the softmax stays float32: probabilities are not rounded to 1/255
    saved = json.loads((tmp_path / REPORT_NAME).read_text())
    assert saved["int8"]["accepted"] is True

    graph = onnx.load(tmp_path / "model.int8.onnx").graph
    made_by = {output: node.op_type for node in graph.node for output in node.output}
    (conv,) = [node for node in graph.node if node.op_type == "Conv"]  # cnn's 1 -> 32 first conv
    assert conv.input[1] not in made_by  # a 9-term dot product stays float32: a plain initializer
    weighted = [node for node in graph.node if node.op_type in ("Gemm", "MatMul")]
    assert weighted and all(made_by.get(node.input[1]) == "DequantizeLinear" for node in weighted)


def test_short_convs_are_the_grey_input_convs():
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [
                onnx.helper.make_node("Conv", ["x", "w1"], ["h"], name="first"),
                onnx.helper.make_node("Conv", ["h", "w2"], ["y"], name="second"),
                onnx.helper.make_node("Conv", ["y", "w3"], ["z"], name="depthwise", group=32),
            ],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 28, 28])],
            [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)],
            [
                onnx.numpy_helper.from_array(np.zeros((32, 1, 3, 3), np.float32), "w1"),
                onnx.numpy_helper.from_array(np.zeros((32, 32, 3, 3), np.float32), "w2"),
                onnx.numpy_helper.from_array(np.zeros((32, 1, 3, 3), np.float32), "w3"),
            ],
        )
    )
    assert short_convs(model) == ["first", "depthwise"]


def test_int8_refused_when_calibrated_on_blank_images(trained_run: Path, split: SampleSplit, tmp_path: Path):
    """All-black calibration images give activation ranges real images overflow: accuracy honestly collapses."""
    out = tmp_path / "model.onnx"
    report = export_checkpoint(
        trained_run,
        out,
        images=split.val_images,
        labels=split.val_labels,
        calibration_images=np.zeros((64, 28, 28), dtype=np.uint8),
        quantize="int8",
    )
    q = report.int8
    assert not q.accepted and q.drop_points > 0.5
    assert report.int8_refusal.startswith("int8 model refused: validation accuracy")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        REPORT_NAME,
        "model.onnx",
    ]  # fp32 kept, no int8 file
    assert json.loads((tmp_path / REPORT_NAME).read_text())["int8"]["accepted"] is False


def test_cli_int8_gate_refuses_with_exit_1(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """--max-int8-drop -100 demands int8 beat float32 by 100 points: always refused, through the CLI."""
    out = tmp_path / "model.onnx"
    code = main(
        ["export", str(trained_run), "--out", str(out), "--quantize", "int8", "--max-int8-drop", "-100"]
    )
    assert code == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("fashiondist: error: int8 model refused: validation accuracy")
    assert f"kept {out}, wrote no int8 file" in err[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [REPORT_NAME, "model.onnx"]
