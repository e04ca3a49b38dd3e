"""A model's output must hold one row per image of the batch (issue 23, item 6): a foreign graph whose
`probs` is [1, K] (declared [N, K]) was broadcast to every row, each row getting row 0's label, rc 0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from fashiondist.cli import main


def _first_row_only(path: Path, metadata: dict[str, str]) -> Path:
    """uint8 [N, 1, 28, 28] -> softmax of the first image's logits alone: [1, 10], declared [N, 10]."""
    weights = helper.make_tensor(
        "w", TensorProto.FLOAT, [784, 10], np.random.default_rng(0).normal(size=7840).astype(np.float32)
    )
    nodes = [
        helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["x"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node(
            "Constant", [], ["starts"], value=helper.make_tensor("s", TensorProto.INT64, [1], [0])
        ),
        helper.make_node(
            "Constant", [], ["ends"], value=helper.make_tensor("e", TensorProto.INT64, [1], [1])
        ),
        helper.make_node("Slice", ["logits", "starts", "ends"], ["first"]),  # [N, 10] -> [1, 10]
        helper.make_node("Softmax", ["first"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "first-row",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, metadata)
    onnx.save(model, path)
    return path


def test_an_output_with_the_wrong_row_count_is_refused(
    onnx_model: Path, sample_test_csv: Path, tmp_path, capsys
):
    metadata = {p.key: p.value for p in onnx.load(onnx_model).metadata_props}
    metadata["num_classes"] = "10"
    metadata["class_names"] = json.dumps([f"c{i}" for i in range(10)])
    model = _first_row_only(tmp_path / "foreign.onnx", metadata)
    out = tmp_path / "submission.csv"
    code = main(
        ["infer", str(sample_test_csv), "--model", str(model), "--out", str(out), "--batch-size", "7"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "output 'probs' is [1, 10] for a batch of 7 images, expected [7, 10]" in err
    assert not out.exists()
