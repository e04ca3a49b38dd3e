"""Does the exported file score what the run reported? The ONNX model's validation accuracy beside the run's.

The run measured its validation accuracy in PyTorch, under its own mixed precision and test-time policy, and
saved what it predicted (`val_predictions.npz`, the best weights predicted again at the end). The export
predicts the same validation images with onnxruntime in float32. The two agree when:

- per image (a run directory with `val_predictions.npz` over these very images): every image whose ONNX
  argmax differs from the run's is an argmax tie in the run's own probabilities, i.e. the implied logit
  margin between the two classes is at most `tie_margin` (below); then the correct counts differ by at
  most the number of such ties, and every other image is predicted the same;
- by count (a bare checkpoint, only its recorded accuracy): the correct counts differ by at most the number
  of images that are argmax ties in the ONNX model's probabilities.

Why a tie is judged relative to the image's logit range: the run's arithmetic rounds every product to its
format's unit roundoff u (bf16: 2^-8; fp16 and TF32, which fashiondist turns on for fp32 matmuls on CUDA:
2^-11), so its logits move by a multiple of u times their magnitude. How large a multiple depends on the
model: a brief cnn-dropout or convnet on the sample moved by at most 2.4 u x the logit range under bf16
autocast, but the mean of three convnets trained 40-60 epochs with label smoothing on Fashion-MNIST moved
its margins by up to 26 u x range on 5,500 images (label smoothing keeps the logits within a few units; the
activations' rounding does not shrink with them), and its export was refused for one such flip. So a
mixed-precision run's factor is measured on the exported model itself (`margin_error`: its float32
probabilities against the same model under the run's autocast format on this CPU, on the very images
judged) and doubled, for the run's own machine rounding otherwise than this one; `TIE_FACTOR` = 8 is the
floor. For that ensemble the band is 0.2 x the logit range; a flip outside it, or dropping the run's flip
TTA (which moves a trained model's predictions far beyond it), is still refused.

Only an export with the run's own TTA is judged; another --tta reports both numbers without a verdict.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fashiondist.metrics import accuracy
from fashiondist.run_layout import BEST_DIR, PREDICTIONS_FILE, SUMMARY_FILE

_UNIT_ROUNDOFF = {"no": 2.0**-11, "fp16": 2.0**-11, "bf16": 2.0**-8}  # "no": TF32 matmuls on CUDA
_UNKNOWN_PRECISION = "bf16"  # a run that did not record its precision is judged by the coarsest format
TIE_FACTOR = 8  # x u x logit range: the floor; mixed-precision runs use their measured factor (module doc)
MEASURED_SAFETY = 2  # the run's machine may round otherwise than the one measuring: twice the measured error
_PROB_FLOOR = 1e-30  # below this a float32 probability has no relative precision left (see export.parity)


@dataclass(frozen=True)
class ValidationRecord:
    """What the run measured on its validation split, read from its files."""

    val_accuracy: float | None  # best/model.json metric.val_acc
    tta: str  # the TTA that accuracy was measured with
    precision: str | None  # summary.json precision: no, fp16, bf16
    predictions: Path | None = None  # val_predictions.npz, when the run directory has one


@dataclass(frozen=True)
class AccuracyAgreement:
    images: int
    onnx_accuracy: float
    run_accuracy: float | None
    onnx_correct: int
    run_correct: int | None
    rule: str  # "per image", "by count", or why there is no verdict
    tie_margin: str  # the tie rule, in words
    differing: int  # images whose argmax differs from the run's (per image), or the count difference
    ties: int  # of those (per image) or of all images (by count), the argmax ties allowed to differ
    agrees: bool | None  # None: not comparable (another TTA, other images, no recorded accuracy)

    def describe(self) -> str:
        run = "unknown" if self.run_accuracy is None else f"{self.run_accuracy:.2%} ({self.run_correct:,})"
        head = (
            f"validation accuracy: ONNX {self.onnx_accuracy:.2%} ({self.onnx_correct:,} of {self.images:,}), "
            f"the run {run}"
        )
        if self.agrees is None:
            return f"{head}; not compared: {self.rule}"
        verdict = "agree" if self.agrees else "DISAGREE"
        if self.rule == "per image":
            return (
                f"{head}: {verdict} ({self.differing} image(s) predicted differently, {self.ties} of them "
                f"argmax ties: {self.tie_margin})"
            )
        return f"{head}: {verdict} (counts differ by {self.differing}, {self.ties} argmax ties: {self.tie_margin})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mixed_format(precision: str | None) -> str | None:
    """The autocast format (bf16, fp16) whose rounding a run's predictions carry; None for float32 runs."""
    precision = precision or _UNKNOWN_PRECISION
    return precision if precision in ("bf16", "fp16") else None


def unit_roundoff(precision: str | None) -> float:
    """The unit roundoff of a run's arithmetic (`no`: TF32 matmuls on CUDA); unrecorded: the coarsest."""
    return _UNIT_ROUNDOFF.get(precision or _UNKNOWN_PRECISION, _UNIT_ROUNDOFF[_UNKNOWN_PRECISION])


def tie_rtol(precision: str | None, measured_rtol: float = 0.0) -> float:
    """The largest implied logit margin, relative to the image's logit range, that counts as an argmax tie:
    `TIE_FACTOR` x u, or `MEASURED_SAFETY` x the model's measured margin error (`margin_error`) if larger."""
    return max(TIE_FACTOR * unit_roundoff(precision), MEASURED_SAFETY * measured_rtol)


def margin_error(reference: np.ndarray, other: np.ndarray) -> float:
    """How far `other` [M, K] moves the margins of `reference`'s probabilities [M, K]: the largest change of
    an implied logit margin (argmax class against any other class), relative to the image's logit range."""
    comparable = (reference > _PROB_FLOOR) & (other > _PROB_FLOOR)  # [M, K]
    ref = np.log(np.where(comparable, reference, 1.0))  # implied logits up to a constant per image
    oth = np.log(np.where(comparable, other, 1.0))
    rows = np.arange(len(reference))
    top = np.where(comparable, ref, -np.inf).argmax(1)  # [M]
    moved = np.abs((ref[rows, top, None] - ref) - (oth[rows, top, None] - oth))  # [M, K]
    spread = np.where(comparable, ref, -np.inf).max(1) - np.where(comparable, ref, np.inf).min(1)
    relative = np.where(comparable, moved, 0.0).max(1) / np.maximum(spread, np.finfo(np.float64).tiny)
    return float(relative[spread > 0].max(initial=0.0))


def _format_name(precision: str | None) -> str:
    """How a run's precision reads in a sentence: `no` (no mixed precision) is float32."""
    if precision is None:
        return "an unrecorded precision"
    return "fp32" if precision == "no" else precision


def compare_accuracy(
    onnx_probs: np.ndarray,
    labels: np.ndarray,
    record: ValidationRecord | None,
    export_tta: str,
    graph_rtol: float = 0.0,
    measured_rtol: float = 0.0,
) -> AccuracyAgreement:
    """Judge `onnx_probs` [M, K] on the validation `labels` [M] against what the run recorded (module doc).

    `graph_rtol`: the exported graph's own error bound (x logit range) when it is coarser than float32 (an fp16
    graph: `parity.FP16_PARITY_TOLERANCE.logit_rtol`); the two errors add, so the tie margin is their sum.
    `measured_rtol`: `margin_error` of the exported model under the run's mixed precision on these images.
    """
    onnx_pred = onnx_probs.argmax(1)
    onnx_correct = int((onnx_pred == labels).sum())
    precision = record.precision if record else None
    u, run_rtol = unit_roundoff(precision), tie_rtol(precision, measured_rtol)
    rtol = run_rtol + graph_rtol
    graph = f" + the graph's own {graph_rtol:.3g}" if graph_rtol else ""
    how = (
        f"{TIE_FACTOR} x the unit roundoff of {_format_name(precision)}"
        if run_rtol == TIE_FACTOR * u
        else f"{MEASURED_SAFETY} x the model's measured {_format_name(precision)} error, "
        f"{measured_rtol / u:.1f} x its unit roundoff"
    )
    base = {
        "images": len(labels),
        "onnx_accuracy": accuracy(labels, onnx_pred),
        "onnx_correct": onnx_correct,
        "tie_margin": f"implied logit margin <= {rtol:.3g} x logit range ({how}{graph})",
    }
    if record is None or record.val_accuracy is None:
        return _no_verdict(base, "the checkpoint records no validation accuracy")
    run_correct = round(record.val_accuracy * len(labels))
    base.update(run_accuracy=record.val_accuracy, run_correct=run_correct)
    if record.tta != export_tta:
        return _no_verdict(base, f"exported with tta {export_tta}, the run measured tta {record.tta}")
    run_probs = _run_predictions(record.predictions, labels)
    if run_probs is not None:
        differs = onnx_pred != run_probs.argmax(1)
        ties = differs & _is_tie(run_probs, onnx_pred, rtol)
        return AccuracyAgreement(
            **base, rule="per image", differing=int(differs.sum()), ties=int(ties.sum()),
            agrees=bool(not (differs & ~ties).any()),
        )  # fmt: skip
    if abs(run_correct / len(labels) - record.val_accuracy) > 0.5 / len(labels):
        return _no_verdict(base, "the run's accuracy was not measured on these images (--data)")
    top2 = np.argsort(onnx_probs, axis=1)[:, -2]
    ties = int(_is_tie(onnx_probs, top2, rtol).sum())
    differing = abs(onnx_correct - run_correct)
    return AccuracyAgreement(
        **base, rule="by count", differing=differing, ties=ties, agrees=differing <= ties
    )


def _no_verdict(base: dict[str, Any], why: str) -> AccuracyAgreement:
    fields = {"run_accuracy": None, "run_correct": None, **base}
    return AccuracyAgreement(**fields, rule=why, differing=0, ties=0, agrees=None)


def _run_predictions(path: Path | None, labels: np.ndarray) -> np.ndarray | None:
    """The run's saved probabilities [M, K] when they are of exactly these labelled images, else None."""
    if path is None or not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as saved:
        y_true, probs = saved["y_true"], saved["probs"]
    if y_true.shape != labels.shape or not np.array_equal(y_true, labels):
        return None
    return probs


def _is_tie(probs: np.ndarray, other: np.ndarray, rtol: float) -> np.ndarray:
    """[M] bool: class `other` is within `rtol` x the logit range of the argmax, in implied logits."""
    comparable = probs > _PROB_FLOOR  # [M, K]; a class that underflowed says nothing about the range
    logp = np.log(np.where(comparable, probs, 1.0))  # implied logits up to a constant per image
    high = np.where(comparable, logp, -np.inf).max(1)
    low = np.where(comparable, logp, np.inf).min(1)
    rows = np.arange(len(probs))
    return comparable[rows, other] & (high - logp[rows, other] <= rtol * (high - low))


def read_validation_record(model_dir: Path, meta: dict[str, Any], run_tta: str) -> ValidationRecord:
    """The record of the checkpoint in `model_dir` (its model.json `meta`): a run's best/ also has the run's
    summary.json (precision) and val_predictions.npz beside it. `run_tta`: the TTA of the run's config, for a
    checkpoint whose model.json predates the `tta` key."""
    val_acc = (meta.get("metric") or {}).get("val_acc")
    record = ValidationRecord(
        None if val_acc is None else float(val_acc), str(meta.get("tta") or run_tta), None
    )
    run_dir = model_dir.parent
    if model_dir.name != BEST_DIR or not (run_dir / SUMMARY_FILE).is_file():
        return record
    try:
        precision = json.loads((run_dir / SUMMARY_FILE).read_text()).get("precision")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        precision = None
    predictions = run_dir / PREDICTIONS_FILE
    return replace(
        record,
        precision=precision if precision in _UNIT_ROUNDOFF else None,
        predictions=predictions if predictions.is_file() else None,
    )
