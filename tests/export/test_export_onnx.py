"""Export: every registered model to one ONNX file that keeps the contract and matches PyTorch on real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from trained_models import SampleSplit

from fashiondist.cli import main
from fashiondist.export.exporter import REPORT_NAME, ExportReport, export_checkpoint, export_model
from fashiondist.export.graph import model_metadata
from fashiondist.export.parity import parity_verdict
from fashiondist.inference.session import REQUIRED_METADATA, open_session
from fashiondist.models import create_model, list_models

# Numerics-sensitive: CI runs this module again under AVX-512 (no AMX) and AVX2 kernel holds (.ci/run).
pytestmark = pytest.mark.numerics


def _meta(name: str, split: SampleSplit) -> dict:
    return {
        "name": name,
        "kwargs": {},
        "num_classes": len(split.class_names),
        "class_names": list(split.class_names),
    }


def _ort_probs(path: Path, images: np.ndarray) -> np.ndarray:
    return open_session(path, "cpu").predict_proba(images.reshape(-1, 1, 28, 28))


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports_and_matches_pytorch(name: str, split: SampleSplit, tmp_path: Path):
    torch.manual_seed(0)
    model = create_model(name, len(split.class_names))  # untrained weights: parity needs no training
    out = tmp_path / f"{name}.onnx"
    # min_images=8 keeps the slow variants quick: batch 1 and 7 see 8 images (7 + a partial batch of 1), 256 sees 256.
    report = export_model(
        model, out, metadata=model_metadata(_meta(name, split)), images=split.val_images, min_images=8
    )

    assert [row.batch_size for row in report.parity] == [1, 7, 256]
    for row in report.parity:
        assert row.passed, row.describe()
    assert [p.name for p in tmp_path.iterdir()] == [
        out.name
    ]  # one self-contained file, no temp or data file left

    graph = onnx.load(out).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch dimension is symbolic
    session = open_session(out, "cpu")  # the inference stage's own contract check
    assert session.model_name == name
    assert session.class_names == split.class_names
    assert set(REQUIRED_METADATA) <= set(session.metadata)
    assert session.metadata["val_accuracy"] == "null"  # this model was never validated
    probs = session.predict_proba(split.val_images[:3].reshape(-1, 1, 28, 28))
    assert probs.dtype == np.float32 and probs.shape == (3, len(split.class_names))
    # A softmax row is its K exps over their float32 sum: K - 1 additions and a division per probability, so a
    # row sums to 1 within (K + 1) x 2^-24 (summed here in float64, exactly enough); x2 for an exp kernel
    # that normalises through a log-sum-exp instead.
    k = len(split.class_names)
    np.testing.assert_allclose(probs.sum(axis=1, dtype=np.float64), 1.0, atol=2 * (k + 1) * 2.0**-24)


@pytest.fixture(scope="module")
def exported(trained_run: Path, split: SampleSplit, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    """The trained run exported once, without TTA, by the library entry point `train` calls."""
    return export_checkpoint(
        trained_run, tmp_path_factory.mktemp("exported") / "model.onnx", images=split.val_images
    )


def test_checkpoint_export_writes_metadata_and_report(
    exported: ExportReport, trained_run: Path, split: SampleSplit
):
    report, out = exported, Path(exported.onnx_path)

    checkpoint_meta = json.loads((trained_run / "best/model.json").read_text())
    metadata = open_session(out, "cpu").metadata
    assert metadata["model"] == "cnn"
    # json.dumps of the same Python float: the shortest repr reads back to the same double, exactly
    assert float(metadata["val_accuracy"]) == checkpoint_meta["metric"]["val_acc"]
    assert json.loads(metadata["class_names"]) == list(split.class_names)
    assert metadata["tta"] == "none" and metadata["quantization"] == "none"
    assert int(metadata["opset"]) == report.opset >= 18

    saved = json.loads((out.parent / REPORT_NAME).read_text())
    assert saved["parity_passed"] is True
    assert [row["batch_size"] for row in saved["parity"]] == [1, 7, 256]
    assert all(row["passed"] and row["worst_ratio"] <= 1.0 for row in saved["parity"])
    assert saved["int8"] is None


def test_flip_tta_graph_averages_image_and_mirror(
    exported: ExportReport, trained_run: Path, split: SampleSplit, tmp_path: Path
):
    plain, flip = Path(exported.onnx_path), tmp_path / "flip.onnx"
    report = export_checkpoint(
        trained_run, flip, images=split.val_images, tta="flip"
    )  # parity vs the engine's TTA
    assert report.tta == "flip" and open_session(flip, "cpu").metadata["tta"] == "flip"

    images = split.val_images[:64]
    expected = 0.5 * (_ort_probs(plain, images) + _ort_probs(plain, images[:, :, ::-1].copy()))
    # Both sides run the same float32 kernels on the same images in other batchings: the export's own parity
    # rule (implied logits within PARITY_TOLERANCE, see export/parity.py) bounds what rounding may change.
    assert parity_verdict(expected, _ort_probs(flip, images), batch_size=len(images)).passed
    assert (
        np.abs(_ort_probs(flip, images) - _ort_probs(plain, images)).max() > 1e-3
    )  # the mirror really counts


def _moved(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """uint8 [N, H, W] moved dy rows down and dx columns right, the uncovered row or column black."""
    out = np.roll(images, (dy, dx), axis=(1, 2))
    if dy:
        out[:, 0 if dy > 0 else -1, :] = 0
    if dx:
        out[:, :, 0 if dx > 0 else -1] = 0
    return out


def test_flip_shift_tta_graph_averages_ten_views(
    exported: ExportReport, trained_run: Path, split: SampleSplit, tmp_path: Path
):
    plain, views = Path(exported.onnx_path), tmp_path / "views.onnx"
    report = export_checkpoint(trained_run, views, images=split.val_images, tta="flip-shift")
    assert report.tta == "flip-shift" and open_session(views, "cpu").metadata["tta"] == "flip-shift"

    images = split.val_images[:64]
    mirrors = images[:, :, ::-1].copy()
    moves = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
    expected = np.mean(
        [_ort_probs(plain, _moved(side, dy, dx)) for side in (images, mirrors) for dy, dx in moves], axis=0
    )
    assert parity_verdict(expected, _ort_probs(views, images), batch_size=len(images)).passed
    flip = 0.5 * (_ort_probs(plain, images) + _ort_probs(plain, mirrors))
    assert np.abs(_ort_probs(views, images) - flip).max() > 1e-3  # the shifted views really count


def test_cli_export(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "model.onnx"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "onnxruntime vs PyTorch" in captured.out and "pass" in captured.out  # the table, on stdout
    assert "validation images of sample" in captured.err  # the log, on stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [REPORT_NAME, "model.onnx"]


def test_cli_export_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    missing = tmp_path / "no-such-run"
    assert main(["export", str(missing), "--out", str(tmp_path / "model.onnx")]) == 2
    assert capsys.readouterr().err == f"fashiondist: error: {missing}: no such run directory or checkpoint\n"
    assert list(tmp_path.iterdir()) == []
