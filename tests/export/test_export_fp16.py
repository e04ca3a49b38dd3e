"""`export --precision fp16`: an fp16 graph with the fp32 graph's contract, checked against the float32
PyTorch model with the fp16 bound (export/parity.py), and run on onnxruntime's CPU provider."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from fashiondist.cli import main
from fashiondist.errors import InputError
from fashiondist.export.exporter import export_checkpoint, report_name
from fashiondist.export.parity import FP16_PARITY_TOLERANCE, PARITY_TOLERANCE, parity_verdict
from fashiondist.inference import open_session, predict_proba

pytestmark = pytest.mark.numerics


@pytest.fixture(scope="module")
def fp16_export(trained_run: Path, split, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("fp16") / "model.fp16.onnx"
    report = export_checkpoint(
        trained_run, out, images=split.val_images, labels=split.val_labels, precision="fp16"
    )
    return out, report


def test_fp16_graph_keeps_the_contract_and_runs_on_the_cpu(fp16_export, split):
    out, report = fp16_export
    proto = onnx.load(out)
    tensor = onnx.TensorProto
    assert proto.graph.input[0].type.tensor_type.elem_type == tensor.UINT8
    assert proto.graph.output[0].type.tensor_type.elem_type == tensor.FLOAT  # the cast is inside the graph
    float_weights = {i.data_type for i in proto.graph.initializer} - {tensor.INT64, tensor.INT32}
    assert float_weights == {tensor.FLOAT16}  # every float weight is fp16
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["precision"] == "fp16"

    session = open_session(out, "cpu", threads=1)
    assert session.provider == "CPUExecutionProvider"
    probs = predict_proba(session, split.val_images[:64], 7)
    assert probs.dtype == np.float32 and probs.shape == (64, session.num_classes)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)  # float32 softmax: 10 terms of u32 = 6e-8 each


def test_fp16_parity_is_judged_with_the_fp16_bound(fp16_export):
    out, report = fp16_export
    assert report.precision == "fp16" and report.parity_tolerance == str(FP16_PARITY_TOLERANCE)
    assert all(row.passed for row in report.parity) and report.accuracy.agrees is True
    saved = json.loads((out.parent / report_name("fp16")).read_text())
    assert saved["precision"] == "fp16" and saved["parity_passed"] is True
    # fp16 rounding shows: the fp32 bound would refuse it, which is why the bound is derived per precision
    assert max(row.max_logit_error for row in report.parity) > PARITY_TOLERANCE.logit_atol


def test_fp16_bound_still_refuses_a_missing_normalisation(split, fp16_export):
    """Logits off by a real error (the normalisation dropped: x68 in float32 terms) fail the fp16 bound."""
    out, _ = fp16_export
    session = open_session(out, "cpu", threads=1)
    images = split.val_images[:64]
    good = predict_proba(session, images)
    shifted = predict_proba(session, (images // 2).astype(np.uint8))  # pixel statistics off by a factor 2
    assert not parity_verdict(good, shifted, 64, FP16_PARITY_TOLERANCE).passed


def test_fp16_refuses_int8_and_the_cli_names_the_file(trained_run: Path, split, tmp_path: Path, capsys):
    with pytest.raises(InputError, match="--quantize int8 is calibrated from the fp32 graph"):
        export_checkpoint(
            trained_run, tmp_path / "m.onnx", images=split.val_images, labels=split.val_labels,
            calibration_images=split.train_images, quantize="int8", precision="fp16",
        )  # fmt: skip
    argv = [
        "export",
        str(trained_run),
        "--precision",
        "fp16",
        "--quantize",
        "int8",
        "--out",
        str(tmp_path / "x.onnx"),
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1
