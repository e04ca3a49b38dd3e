"""The parity verdict: do onnxruntime's probabilities match PyTorch's closely enough for a correct graph?

`export.graph.check_parity` runs both runtimes on the same real images at each batch size and hands the two
probability arrays to `parity_verdict`: it passes when they are within the float32 tolerance below and every
argmax is equal. Pure numpy, so `launch/gpu_check.py` judges the GPU runtimes with the same rule.

The tolerance is on the logits the probabilities imply, relative to their range. A logit error `d_j` moves
`log p_j` by `d_j - sum_k p_k d_k`, so `log p_ort - log p_torch` recovers the logit errors up to a constant
per image, and the spread of that difference (max - min over the classes) is the largest difference
between two classes' errors. Correct float32 kernels differ by rounding that grows with the size of the
numbers summed: measured between PyTorch and onnxruntime (MLAS) on AVX-512 and with PyTorch held to AVX2
(`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`), every registered model, untrained and trained, stays
below 2.6e-6 x the image's logit range plus 7.2e-7 (float32 rounding of log p). The untrained notebook
resnet has logits spanning 100, so on AVX2 its probabilities differ by 1.03e-5 (1.21e-5 on a real AVX2
CPU) while its logits differ by only 1.1e-6 of their range: an absolute bound on probabilities refuses it.
A wrong graph differs by far more: one weight of a trained cnn changed by 1e-3 moves the implied logits by
1e-3 to 2.4e-3 (18-27x the tolerance) and a missing normalisation by 68.

The range seen through the probabilities can understate the numbers summed: classes below `_PROB_FLOOR` drop
out, and a constant shared by every logit cancels in the softmax, yet float32 rounds each logit relative to
its own size. A convnet trained for one epoch on 340 images has logits near 1e4 whose comparable classes
span ~40, so its correct graph differed by 2^-10 (the spacing of float32 numbers near 1e4), 2.5-13x a
tolerance drawn from the span. The caller that has the model passes each image's largest |logit|
(`logit_scale`), and the tolerance is relative to the larger of the two.

An fp16 graph (`export --precision fp16`) is judged against the same float32 PyTorch model with
`FP16_PARITY_TOLERANCE`, written in fp16's unit roundoff u = 2^-11 like `export.agreement`'s tie rule. It
cannot see a 1e-3 weight error (that is fp16's own rounding), but a missing normalisation is still ~1000x
over it. Under that bound an argmax can only flip where the two classes' margin is itself within the bound,
so an fp16 flip under the bound is a tie, not a failure (`argmax_exact=False`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ParityTolerance:
    """Allowed implied logit error per image: `logit_atol + logit_rtol x` the image's logit range (or its
    largest |logit|, when that is known and larger)."""

    logit_rtol: float = 1e-5  # 4x the largest relative error measured across ISAs (2.6e-6), ~80 float32 ulps
    logit_atol: float = 1e-5  # 14x float32 rounding of log p (7.2e-7) for near-uniform probabilities
    argmax_exact: bool = True  # every argmax equal; False: a flip within the logit bound is a tie (fp16)

    def __str__(self) -> str:
        ties = "" if self.argmax_exact else " (argmax flips within it are ties)"
        scale = "max(logit range, |logit|)"
        return f"implied logit error <= {self.logit_atol:g} + {self.logit_rtol:g} x {scale}{ties}"


PARITY_TOLERANCE = ParityTolerance()
_FP16_UNIT_ROUNDOFF = 2.0**-11  # fp16 has an 11-bit significand (10 stored + the implicit 1)
# bf16 autocast moved each logit by <= 2.4 u x range (export.agreement), so two classes' difference by <= 4.8 u;
# fp16 inference also rounds the weights and the normalised input (autocast kept both fp32): 16 u, 3.3x that.
# The atol is the same 16 u on logits of order 1 (unit-variance activations), for near-uniform probabilities.
FP16_PARITY_TOLERANCE = ParityTolerance(
    logit_rtol=16 * _FP16_UNIT_ROUNDOFF, logit_atol=16 * _FP16_UNIT_ROUNDOFF, argmax_exact=False
)
PARITY_TOLERANCES = {"fp32": PARITY_TOLERANCE, "fp16": FP16_PARITY_TOLERANCE}  # by export precision
# Below this a float32 probability has lost its relative precision (subnormals start at 1.2e-38): such
# classes, far from any decision, are left out of the logit comparison.
_PROB_FLOOR = 1e-30
_ONE_SIDED_LIMIT = 1e-20  # left out on one side only: both must still be negligible


@dataclass(frozen=True)
class ParityRow:
    batch_size: int
    images: int
    max_abs_diff: float  # max |probability difference|, for the record
    max_logit_error: float  # the largest implied logit error of an image (see the module docstring)
    worst_ratio: float  # max over images of implied logit error / allowed; <= 1 passes
    argmax_agreement: float  # fraction of images whose argmax agrees
    argmax_exact: bool = True  # False: flips within the logit bound are ties (ParityTolerance.argmax_exact)

    @property
    def passed(self) -> bool:
        return self.worst_ratio <= 1.0 and (self.argmax_agreement == 1.0 or not self.argmax_exact)

    def describe(self) -> str:
        return (
            f"batch {self.batch_size}: implied logit error {self.max_logit_error:.2e} "
            f"({self.worst_ratio:.2g}x the tolerance), max |dp| {self.max_abs_diff:.2e}, "
            f"argmax agreement {self.argmax_agreement:.2%}"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def parity_verdict(
    reference: np.ndarray,
    candidate: np.ndarray,
    batch_size: int,
    tolerance: ParityTolerance = PARITY_TOLERANCE,
    logit_scale: np.ndarray | None = None,
) -> ParityRow:
    """Compare two float32 probability arrays [N, K] of the same images (reference: PyTorch); `logit_scale`
    [N]: each image's largest |logit| in the reference model, when the caller knows it."""
    both = (reference > _PROB_FLOOR) & (candidate > _PROB_FLOOR)  # [N, K]
    log_ref = np.log(np.where(both, reference, 1.0))
    diff = np.log(np.where(both, candidate, 1.0)) - log_ref  # logit errors + a constant per image
    error = _spread(diff, both)  # [N]
    scale = _spread(log_ref, both) if logit_scale is None else np.fmax(_spread(log_ref, both), logit_scale)
    allowed = tolerance.logit_atol + tolerance.logit_rtol * scale  # [N]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(allowed > 0, error / allowed, np.where(error > 0, np.inf, 0.0))
    # A class that is comparable on one side only (0 or NaN against a real probability), or an image with no
    # comparable class, is a disagreement no tolerance covers.
    one_sided = ~both & (np.fmax(reference, candidate) > _ONE_SIDED_LIMIT)
    broken = one_sided.any(axis=1) | ~both.any(axis=1) | ~np.isfinite(candidate).all(axis=1)
    ratio = np.where(broken, np.inf, ratio)
    return ParityRow(
        batch_size=batch_size,
        images=len(reference),
        max_abs_diff=float(np.abs(candidate - reference).max()),
        max_logit_error=float(error.max()),
        worst_ratio=float(ratio.max()),
        argmax_agreement=float(np.mean(candidate.argmax(1) == reference.argmax(1))),
        argmax_exact=tolerance.argmax_exact,
    )


def _spread(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """max - min over each row's masked entries; 0 for a row with none."""
    high = np.where(mask, values, -np.inf).max(axis=1)
    low = np.where(mask, values, np.inf).min(axis=1)
    return np.where(mask.any(axis=1), high - low, 0.0)
