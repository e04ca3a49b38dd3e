"""Parity: a tolerance that holds on every CPU kind (AVX2, AVX-512) and still refuses a wrong graph."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from trained_models import SampleSplit

from fashiondist.cli.export import export_table
from fashiondist.config import Tta
from fashiondist.errors import FashiondistError
from fashiondist.export import exporter
from fashiondist.export.exporter import export_checkpoint
from fashiondist.export.graph import logit_magnitude
from fashiondist.export.parity import PARITY_TOLERANCE, parity_verdict
from fashiondist.models.checkpoint import load_model
from fashiondist.models.ensemble import ProbabilityEnsemble
from fashiondist.models.tta import shifted

# Numerics-sensitive: CI runs this module again under AVX-512 (no AMX) and AVX2 kernel holds (.ci/run).
pytestmark = pytest.mark.numerics


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    """Trained-model-like logits [256, 10]: one class ahead by 5-20, spanning up to ~40 (float64)."""
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 4.0, size=(256, 10))
    z[np.arange(256), rng.integers(0, 10, 256)] += rng.uniform(5, 20, 256)
    return z


def test_float32_rounding_relative_to_the_logits_passes(logits: np.ndarray):
    # 3e-6 x each image's logit range: above the largest ISA-to-ISA difference measured (2.6e-6)
    rng = np.random.default_rng(1)
    scale = (logits.max(1) - logits.min(1))[:, None]
    noisy = logits + 3e-6 * scale * rng.uniform(-0.5, 0.5, logits.shape)
    row = parity_verdict(_softmax(logits), _softmax(noisy), 256)
    assert row.passed and 0 < row.worst_ratio < 1, row.describe()


def test_a_large_logit_range_passes_where_an_absolute_probability_bound_fails():
    # The untrained notebook resnet's case on AVX2: logits spanning ~100, errors of 1e-6 of that range.
    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 25.0, size=(256, 10))
    noisy = z + 1e-6 * 100 * rng.uniform(-1, 1, z.shape)
    reference, candidate = _softmax(z), _softmax(noisy)
    row = parity_verdict(reference, candidate, 256)
    assert row.max_abs_diff > 1e-5  # the old bound (max |dp| <= 1e-5) refused this
    assert row.passed, row.describe()


def test_logits_far_from_zero_are_judged_relative_to_their_size(logits: np.ndarray):
    # A constant shared by all logits cancels in the softmax, but float32 rounds each logit relative to its
    # size: near 1e4 that is 2^-10, far above a tolerance drawn from the ~40 the probabilities show.
    offset = logits + 1e4
    rounded = offset.astype(np.float32).astype(np.float64)
    reference, candidate = _softmax(offset), _softmax(rounded)
    assert not parity_verdict(reference, candidate, 256).passed
    row = parity_verdict(reference, candidate, 256, logit_scale=np.abs(offset).max(1))
    assert row.passed, row.describe()
    wrong = rounded.copy()
    wrong[:, 3] += 0.5  # still refused: 0.5 is 5e-5 of 1e4, five times the tolerance
    assert not parity_verdict(reference, _softmax(wrong), 256, logit_scale=np.abs(offset).max(1)).passed


def test_logit_magnitude_sees_every_view(trained_run: Path, split: SampleSplit):
    model, _ = load_model(trained_run / "best")
    model.eval()
    pixels = torch.from_numpy(np.asarray(split.val_images[:16])).unsqueeze(1)
    moves = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]  # flip-shift: each image and its mirror, moved so
    with torch.no_grad():
        top = [
            torch.stack([model(shifted(v, dy, dx)).abs().amax(1) for dy, dx in moves]).amax(0).numpy()
            for v in (pixels, pixels.flip(3))
        ]
    np.testing.assert_allclose(logit_magnitude(model, pixels, Tta.FLIP_SHIFT), np.fmax(*top), rtol=1e-6)
    with torch.no_grad():
        plain, mirror = (model(v).abs().amax(1).numpy() for v in (pixels, pixels.flip(3)))
    ensemble = ProbabilityEnsemble([model, model], [Tta.NONE, Tta.FLIP])  # members' logits, each its TTA
    np.testing.assert_allclose(logit_magnitude(ensemble, pixels), np.fmax(plain, mirror), rtol=1e-6)
    assert not np.allclose(plain, mirror)  # the mirror's logits really count


def test_a_model_with_a_large_logit_offset_exports(
    trained_run: Path, split: SampleSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Every class's logit raised by the same large sum of the features (the probabilities do not change):
    a correct graph whose logits float32 rounds at ~1e-3, and the export must pass it."""
    model, meta = load_model(trained_run / "best")
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight += 1e4 / head.in_features  # one row added to every class's: a shared offset
    monkeypatch.setattr(exporter, "load_model", lambda checkpoint: (model, meta))
    report = export_checkpoint(trained_run, tmp_path / "model.onnx", images=split.val_images)
    assert all(row.passed for row in report.parity), [r.describe() for r in report.parity]
    assert max(row.max_logit_error for row in report.parity) > PARITY_TOLERANCE.logit_atol  # rounding at 1e4


@pytest.mark.parametrize("shift", [1e-3, -1e-3])
def test_one_class_shifted_by_a_thousandth_is_refused(logits: np.ndarray, shift: float):
    wrong = logits.copy()
    wrong[:, 3] += shift  # an output bias changed by 1e-3
    row = parity_verdict(_softmax(logits), _softmax(wrong), 256)
    assert not row.passed and row.worst_ratio > 1, row.describe()


def test_nan_or_a_lost_class_is_refused(logits: np.ndarray):
    reference = _softmax(logits)
    nan = reference.copy()
    nan[5, 2] = np.nan
    assert parity_verdict(reference, nan, 256).worst_ratio == np.inf
    lost = reference.copy()
    lost[7, int(reference[7].argmin())] = 0.0  # a class that had a real probability
    assert reference[7].min() > 1e-20
    assert not parity_verdict(reference, lost, 256).passed


def _wrong_to_onnx(break_model):
    """exporter.to_onnx that exports a broken copy: the graph differs from the model it is checked against."""
    real = exporter.to_onnx

    def to_onnx(model, *args):
        broken = copy.deepcopy(model)
        with torch.no_grad():
            break_model(broken)
        return real(broken, *args)

    return to_onnx


def _first_weight_plus_a_thousandth(model: torch.nn.Module) -> None:
    next(model.parameters()).view(-1)[0] += 1e-3  # the first conv's first kernel weight


def _no_normalisation(model: torch.nn.Module) -> None:
    model.pixel_mean.fill_(0.0)
    model.pixel_std.fill_(1.0)


@pytest.mark.parametrize("break_model", [_first_weight_plus_a_thousandth, _no_normalisation])
def test_export_refuses_a_wrong_graph_and_writes_nothing(
    break_model, trained_run: Path, split: SampleSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(exporter, "to_onnx", _wrong_to_onnx(break_model))
    with pytest.raises(FashiondistError, match="onnxruntime disagrees with PyTorch .*nothing written"):
        export_checkpoint(trained_run, tmp_path / "model.onnx", images=split.val_images)
    assert list(tmp_path.iterdir()) == []


def test_the_trained_model_is_well_inside_the_tolerance(
    trained_run: Path, split: SampleSplit, tmp_path: Path
):
    """The same check passes the right graph with room to spare (so the refusals above are not noise)."""
    report = export_checkpoint(trained_run, tmp_path / "model.onnx", images=split.val_images)
    assert all(row.passed and row.worst_ratio < 0.5 for row in report.parity), [
        r.describe() for r in report.parity
    ]
    assert str(PARITY_TOLERANCE) in export_table(report).caption
    model, _ = load_model(trained_run / "best")
    assert model.pixel_std.item() != 1.0  # the normalisation the second refusal removes is really there
