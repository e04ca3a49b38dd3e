"""Bad input to `fashiondist infer`: one exact error line, exit code 2, and no output file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fashiondist.cli import main
from fashiondist.data.csvio import write_competition_csv
from fashiondist.data.sources import load_data
from fashiondist.errors import CsvError, InputError
from fashiondist.inference import open_session, open_submission, predict_csv, predict_proba

ROWS = 6  # a small real test file: header on line 1, rows on lines 2..7


@pytest.fixture(scope="module")
def good_lines(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    test = load_data("sample", split="test")
    path = tmp_path_factory.mktemp("csv") / "testX.csv"
    write_competition_csv(path, test.ids[:ROWS], test.images[:ROWS])
    return path.read_text().splitlines()


def _set_cell(lines: list[str], line: int, column: int, value: str) -> list[str]:
    """`lines` with cell `column` (0 = Id) of editor line `line` replaced."""
    cells = lines[line - 1].split(",")
    cells[column] = value
    return [*lines[: line - 1], ",".join(cells), *lines[line:]]


def _truncate(lines: list[str], line: int, cells: int) -> list[str]:
    return [*lines[: line - 1], ",".join(lines[line - 1].split(",")[:cells]), *lines[line:]]


def _duplicate_id(lines: list[str], line: int, of_line: int) -> list[str]:
    return _set_cell(lines, line, 0, lines[of_line - 1].split(",")[0])


# (name, how to break the file, the error after the path) — the data layer's own messages, through infer
CSV_CASES: list[tuple[str, Callable[[list[str]], list[str]], Callable[[list[str]], str]]] = [
    ("pixel-not-integer", lambda ls: _set_cell(ls, 3, 11, "x"), lambda ls: ", line 3, column '10': pixel value 'x' is not an integer"),
    ("pixel-too-big", lambda ls: _set_cell(ls, 4, 1, "256"), lambda ls: ", line 4, column '0': pixel value 256 is outside 0..255"),
    ("pixel-negative", lambda ls: _set_cell(ls, 5, 784, "-3"), lambda ls: ", line 5, column '783': pixel value -3 is negative"),
    ("pixel-empty", lambda ls: _set_cell(ls, 2, 300, ""), lambda ls: ", line 2, column '299': empty pixel value"),
    ("id-not-integer", lambda ls: _set_cell(ls, 6, 0, "abc"), lambda ls: ", line 6, column 'Id': Id 'abc' is not an integer"),
    ("truncated-row", lambda ls: _truncate(ls, 7, 100), lambda ls: ", line 7, column '99': the row ends after 100 of 785 columns (truncated?)"),
    ("duplicate-id", lambda ls: _duplicate_id(ls, 5, 2), lambda ls: f", line 5, column 'Id': duplicate Id {ls[1].split(',')[0]} (first on line 2)"),
    ("bad-header", lambda ls: ["Idx" + ls[0][2:], *ls[1:]], lambda ls: ", line 1, column 'Idx': the first column must be 'Id'"),
    ("header-only", lambda ls: ls[:1], lambda ls: ", line 2: no data rows after the header"),
    ("empty-file", lambda ls: [], lambda ls: ", line 1: the file is empty; expected a header `Id,Label,<784 pixels>` or `Id,<784 pixels>`"),
]  # fmt: skip


def _run_infer(csv_path: Path, model: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["infer", str(csv_path), "--model", str(model), "--out", str(out)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name,corrupt,problem", CSV_CASES, ids=[case[0] for case in CSV_CASES])
def test_bad_csv(name, corrupt, problem, good_lines, onnx_model: Path, tmp_path: Path, capsys):
    bad = tmp_path / "testX.csv"
    lines = corrupt(good_lines)
    bad.write_text("\n".join(lines) + ("\n" if lines else ""))
    out = tmp_path / "submission.csv"
    code, err = _run_infer(bad, onnx_model, out, capsys)
    assert (code, err) == (2, f"fashiondist: error: {bad}{problem(good_lines)}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["testX.csv"]  # no submission, no temp file


def test_missing_csv(onnx_model: Path, tmp_path: Path, capsys):
    missing, out = tmp_path / "nope.csv", tmp_path / "submission.csv"
    assert _run_infer(missing, onnx_model, out, capsys) == (
        2,
        f"fashiondist: error: {missing}: file not found\n",
    )
    assert list(tmp_path.iterdir()) == []


def test_bad_row_in_a_later_chunk_leaves_no_file(good_lines, onnx_model: Path, tmp_path: Path):
    """Chunks before the bad row were predicted and written to the temp file; the error still leaves nothing."""
    bad = tmp_path / "testX.csv"
    bad.write_text("\n".join(_duplicate_id(good_lines, 6, 2)) + "\n")  # line 6 is in the third 2-row chunk
    out = tmp_path / "submission.csv"
    model = open_session(onnx_model, "cpu")
    written = 0
    with pytest.raises(CsvError, match="line 6, column 'Id': duplicate Id"), open_submission(out) as writer:
        for chunk in predict_csv(model, bad, chunk_rows=2):
            writer.write(chunk.ids, chunk.predictions)
            written = writer.rows
    assert written == 4  # two chunks went out before the error
    assert [p.name for p in tmp_path.iterdir()] == ["testX.csv"]


def _tiny_model(
    path: Path, shape: list, metadata: dict[str, str], output: str = "probs", fill: float = 0.0
) -> Path:
    """A valid ONNX classifier built by hand: uint8 image -> cast -> flatten -> matmul -> softmax, every
    weight `fill` (NaN: a model whose every probability is NaN)."""
    pixels = int(np.prod(shape[1:]))
    weights = helper.make_tensor(
        "w", TensorProto.FLOAT, [pixels, 10], np.full(pixels * 10, fill, dtype=np.float32)
    )
    nodes = [
        helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["x"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [output], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 10])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _metadata(onnx_model: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(onnx_model).metadata_props}


CONTRACT = "a fashiondist model has one input 'pixels', uint8 [N, 1, 28, 28]"


MODEL_CASES = [
    pytest.param(lambda p, meta: _write(p, "Id,Label\n1,2\n"),
                 ": not a readable ONNX model (Protobuf parsing failed.)", id="not-onnx"),
    pytest.param(lambda p, meta: _tiny_model(p, ["N", 1, 32, 32], meta),
                 f": the model's input is 'pixels' tensor(uint8) [N, 1, 32, 32]; {CONTRACT}", id="wrong-input-shape"),
    pytest.param(lambda p, meta: _tiny_model(p, ["N", 3, 28, 28], meta),
                 f": the model's input is 'pixels' tensor(uint8) [N, 3, 28, 28]; {CONTRACT}", id="three-channels"),
    pytest.param(lambda p, meta: _tiny_model(p, [1, 1, 28, 28], meta),
                 ": input 'pixels' has a fixed batch size of 1; a fashiondist model has a dynamic batch dimension "
                 "(hint: re-export it with `fashiondist export`)", id="fixed-batch"),
    pytest.param(lambda p, meta: _tiny_model(p, ["N", 1, 28, 28], meta, output="scores"),
                 ": the model's outputs are 'scores' tensor(float) [N, 10]; a fashiondist model has an output "
                 "'probs', float32 [N, K]", id="no-probs-output"),
    pytest.param(lambda p, meta: _tiny_model(p, ["N", 1, 28, 28], {}),
                 ": not a fashiondist model: its metadata lacks fashiondist_version, model, num_classes, class_names, "
                 "val_accuracy (hint: export it with `fashiondist export`)", id="missing-metadata"),
    pytest.param(lambda p, meta: p, ": model file not found", id="missing-file"),
]  # fmt: skip


@pytest.mark.parametrize("build,problem", MODEL_CASES)
def test_bad_model(build, problem, onnx_model: Path, sample_test_csv: Path, tmp_path: Path, capsys):
    model = build(tmp_path / "model.onnx", _metadata(onnx_model))
    out = tmp_path / "submission.csv"
    code, err = _run_infer(sample_test_csv, model, out, capsys)
    assert (code, err) == (2, f"fashiondist: error: {model}{problem}\n")
    assert not out.exists() and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_out_must_not_be_the_input(onnx_model: Path, good_lines, tmp_path: Path, capsys):
    csv_path = tmp_path / "testX.csv"
    csv_path.write_text("\n".join(good_lines) + "\n")
    code, err = _run_infer(csv_path, onnx_model, csv_path, capsys)
    assert (code, err) == (
        2,
        f"fashiondist: error: --out {csv_path}: is the input CSV; choose another file name\n",
    )
    assert csv_path.read_text() == "\n".join(good_lines) + "\n"


def test_out_directory_must_exist(onnx_model: Path, sample_test_csv: Path, tmp_path: Path, capsys):
    out = tmp_path / "missing-dir" / "submission.csv"
    code, err = _run_infer(sample_test_csv, onnx_model, out, capsys)
    assert (code, err) == (
        2,
        f"fashiondist: error: --out {out}: the output directory {out.parent} does not exist\n",
    )


GOOD_OUT = b"Id,Label\n1,2\n"  # an earlier submission that a refused run must leave byte-identical


def _refused(csv_path: Path, model: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The error output of an `infer` that must refuse (exit 2), leave an earlier submission at `out`
    byte-identical and write no other file beside it."""
    out.write_bytes(GOOD_OUT)
    before = sorted(out.parent.iterdir())
    code, err = _run_infer(csv_path, model, out, capsys)
    assert code == 2, err
    assert out.read_bytes() == GOOD_OUT
    assert sorted(out.parent.iterdir()) == before  # no temp file either
    return err


def _with_metadata(onnx_model: Path, path: Path, **changes: str) -> Path:
    """The real exported model with some metadata_props replaced."""
    model = onnx.load(onnx_model)
    helper.set_model_props(model, {**_metadata(onnx_model), **changes})
    onnx.save(model, path)
    return path


HINT = " (hint: re-export it with `fashiondist export`)"
METADATA_CASES = [
    pytest.param({"val_accuracy": "not-a-number"}, ": metadata val_accuracy = 'not-a-number' is not null or a number in 0..1", id="accuracy-text"),
    pytest.param({"val_accuracy": "NaN"}, ": metadata val_accuracy = 'NaN' is not null or a number in 0..1", id="accuracy-nan"),
    pytest.param({"val_accuracy": "1.5"}, ": metadata val_accuracy = '1.5' is not null or a number in 0..1", id="accuracy-above-1"),
    pytest.param({"num_classes": "ten"}, ": metadata num_classes = 'ten' is not an integer of at least 2", id="classes-text"),
    pytest.param({"num_classes": "1"}, ": metadata num_classes = '1' is not an integer of at least 2", id="one-class"),
    pytest.param({"class_names": json.dumps("0123456789")},
                 """: metadata class_names = '"0123456789"' is not a JSON list of 10 distinct class names""", id="names-one-string"),
    pytest.param({"class_names": json.dumps(["a"] * 10)},
                 f": metadata class_names = {json.dumps(['a'] * 10)!r} is not a JSON list of 10 distinct class names", id="names-repeat"),
    pytest.param({"class_names": "[T-shirt"}, ": metadata class_names = '[T-shirt' is not a JSON list of 10 distinct class names", id="names-not-json"),
    pytest.param({"model": " "}, ": metadata model = ' ' is not a non-empty name", id="model-blank"),
    pytest.param(
        {"tta": "sideways"}, ": metadata tta = 'sideways' is not one of none, flip, flip-shift", id="tta"
    ),
    pytest.param({"model_kwargs": "[64]"}, ": metadata model_kwargs = '[64]' is not a JSON object", id="kwargs"),
    pytest.param({"epoch": "-1"}, ": metadata epoch = '-1' is not a whole number", id="epoch"),
]  # fmt: skip


@pytest.mark.parametrize("changes,problem", METADATA_CASES)
def test_malformed_metadata_is_refused_before_anything_is_written(
    changes, problem, onnx_model: Path, sample_test_csv: Path, tmp_path: Path, capsys
):
    """`val_accuracy` = "not-a-number" once wrote the submission, then failed with a traceback."""
    model = _with_metadata(onnx_model, tmp_path / "model.onnx", **changes)
    assert (
        _refused(sample_test_csv, model, tmp_path / "submission.csv", capsys)
        == f"fashiondist: error: {model}{problem}{HINT}\n"
    )


def test_a_model_that_outputs_nan_is_refused(onnx_model: Path, good_lines, tmp_path: Path, capsys):
    """A model whose probabilities are NaN was accepted and every label became 0."""
    model = _tiny_model(tmp_path / "nan.onnx", ["N", 1, 28, 28], _metadata(onnx_model), fill=np.nan)
    csv_path = tmp_path / "testX.csv"
    csv_path.write_text("\n".join(good_lines) + "\n")
    assert _refused(csv_path, model, tmp_path / "submission.csv", capsys) == (
        f"fashiondist: error: {model}: model cnn outputs NaN or infinite probabilities for {ROWS} of {ROWS} "
        f"rows, the first at {csv_path}, line 2 (hint: the model is broken; train or export it again)\n"
    )
    images = load_data("sample", split="test").images[:3]
    with pytest.raises(InputError, match=r"for 3 of 3 rows, the first at image 0 \("):
        predict_proba(open_session(model, "cpu"), images)


def test_old_mac_line_ends_predict_every_row(good_lines, onnx_model: Path, tmp_path: Path, capsys):
    """A `\\r`-only file once printed "wrote S.csv: 0 rows" and replaced a good S.csv with a bare header."""
    lf, cr = tmp_path / "lf.csv", tmp_path / "cr.csv"
    lf.write_text("\n".join(good_lines) + "\n")
    cr.write_text("\r".join(good_lines) + "\r", newline="")
    assert _run_infer(lf, onnx_model, tmp_path / "lf-out.csv", capsys)[0] == 0
    out = tmp_path / "out.csv"
    out.write_bytes(GOOD_OUT)
    assert main(["infer", str(cr), "--model", str(onnx_model), "--out", str(out)]) == 0
    assert f"wrote {out}: {ROWS} rows" in capsys.readouterr().out
    assert out.read_bytes() == (tmp_path / "lf-out.csv").read_bytes()


def test_a_huge_field_is_one_error_and_keeps_the_old_submission(onnx_model: Path, tmp_path: Path, capsys):
    """`python -c "print('A'*200000)" > h.csv` was a `_csv.Error` traceback, exit 1."""
    huge = tmp_path / "h.csv"
    huge.write_text("A" * 200_000 + "\n")
    assert _refused(huge, onnx_model, tmp_path / "submission.csv", capsys) == (
        f"fashiondist: error: {huge}, line 1: cannot be split into cells: field larger than field limit (131072)\n"
    )
