"""Static int8 quantization (QDQ, per-channel weights) with an accuracy gate.

onnxruntime's `quantize_static` calibrates activation ranges on real training images (MinMax over
`calibration_images`), then inserts QuantizeLinear/DequantizeLinear pairs around the convolutions and dense
layers: int8 per-channel weights and uint8 activations (onnxruntime's recommended U8S8 on x86); the
softmax stays float32, so `probs` keeps its precision. The model is first pre-processed
(`quant_pre_process`: shape inference, and a BatchNorm right after a conv folded into it).

The int8 model is kept only if its validation accuracy is at most `max_drop_points` below the float model's,
both measured by onnxruntime on the same images; otherwise nothing is written and the report says why.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from fashiondist.atomic_io import write_bytes
from fashiondist.constants import IMAGE_SHAPE, ONNX_INPUT_NAME
from fashiondist.errors import FashiondistError
from fashiondist.inference.predict import predict_proba
from fashiondist.inference.session import ModelSession, open_model_bytes, open_session
from fashiondist.metrics import accuracy

# Only the weighted layers: a quantized Softmax would round the probabilities to 1/255 steps (ties in the
# argmax, a coarse --probs), and quantized pooling only adds (de)quantize pairs around a cheap op.
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
QUANTIZATION = (
    "int8 static QDQ: per-channel s8 weights, u8 activations of Conv/Gemm/MatMul (a conv with dot products "
    "under 32 terms stays float32), MinMax calibration"
)
SPEED_BATCH = 256  # images per call when timing fp32 against int8
# A conv whose dot products are this short (in_channels/groups x kh x kw, e.g. the 1 x 3 x 3 of a first conv
# over grey pixels) stays float32: int8 kernels gain nothing on 9-term sums and the (de)quantization of its
# large output costs more. Measured on cnn-dropout (2 cores, batch 256): the int8 first conv took 3.7 ms of
# a 10.3 ms batch, the float32 one 1.2 ms.
MIN_INT8_CONV_REDUCTION = 32


@dataclass(frozen=True)
class QuantReport:
    path: str
    accepted: bool
    fp32_accuracy: float
    int8_accuracy: float
    drop_points: float  # (fp32 - int8) accuracy in percentage points; negative when int8 is better
    max_drop_points: float
    images: int
    calibration_images: int
    fp32_images_per_s: float
    int8_images_per_s: float
    file_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


class ImageCalibrationReader:
    """onnxruntime CalibrationDataReader over uint8 images [N, 28, 28], `batch_size` at a time."""

    def __init__(self, images: np.ndarray, batch_size: int = 64):
        self._pixels = np.ascontiguousarray(images).reshape(-1, *IMAGE_SHAPE)  # [N, 1, 28, 28]
        self._batch_size = batch_size
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self._pixels):
            return None
        batch = self._pixels[self._start : self._start + self._batch_size]
        self._start += self._batch_size
        return {ONNX_INPUT_NAME: batch}

    def rewind(self) -> None:
        self._start = 0


def quantize_int8(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    *,
    calibration_images: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    max_drop_points: float = 0.5,
    log: Callable[[str], None] | None = None,
) -> QuantReport:
    """Quantize `fp32_path` into `int8_path` if accuracy on (`images`, `labels`) holds; see the module docstring."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    log = log or (lambda message: None)
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    if len(calibration_images) == 0 or len(images) == 0:
        raise FashiondistError("int8 quantization needs calibration images and labelled validation images")
    log(
        f"quantizing to int8 (static QDQ, per-channel) calibrated on {len(calibration_images)} training images"
    )
    with tempfile.TemporaryDirectory(prefix="fashiondist-int8-") as tmp:
        prepared, quantized = Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        float_convs = short_convs(onnx.load(str(prepared)))
        quantize_static(
            str(prepared),
            str(quantized),
            ImageCalibrationReader(calibration_images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=float_convs,
        )
        proto = onnx.load(str(quantized))
    fp32_meta = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
    onnx.helper.set_model_props(
        proto, {**fp32_meta, "quantization": QUANTIZATION, "calibration_images": str(len(calibration_images))}
    )
    onnx.checker.check_model(proto, full_check=True)
    blob = proto.SerializeToString()

    log(f"comparing int8 with fp32 on {len(images)} validation images")
    pixels = np.ascontiguousarray(images).reshape(-1, *IMAGE_SHAPE)  # [N, 28, 28] -> [N, 1, 28, 28]
    fp32_acc, fp32_speed = _accuracy_and_speed(open_session(fp32_path, "cpu"), pixels, labels)
    int8_acc, int8_speed = _accuracy_and_speed(open_model_bytes(blob, int8_path), pixels, labels)
    drop = 100.0 * (fp32_acc - int8_acc)
    accepted = drop <= max_drop_points
    if accepted:
        write_bytes(int8_path, blob)
        log(f"wrote {int8_path} ({len(blob) / 1e6:.2f} MB)")
    return QuantReport(
        path=str(int8_path) if accepted else "",
        accepted=accepted,
        fp32_accuracy=fp32_acc,
        int8_accuracy=int8_acc,
        drop_points=round(drop, 4),
        max_drop_points=max_drop_points,
        images=len(images),
        calibration_images=len(calibration_images),
        fp32_images_per_s=fp32_speed,
        int8_images_per_s=int8_speed,
        file_bytes=len(blob),
    )


def short_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes whose dot products are shorter than MIN_INT8_CONV_REDUCTION terms."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        weight = shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is not None and len(weight) >= 3 and int(np.prod(weight[1:])) < MIN_INT8_CONV_REDUCTION:
            names.append(node.name)  # weight [out, in / groups, kh, kw]: the reduction is in/groups x kh x kw
    return names


def _accuracy_and_speed(session: ModelSession, pixels: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Accuracy on `pixels`, and images/s at batch 256 (best of 3 passes over up to 2048 images)."""
    probs = predict_proba(session, pixels, SPEED_BATCH)
    timed = pixels[: 8 * SPEED_BATCH]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        predict_proba(session, timed, SPEED_BATCH)
        best = min(best, time.perf_counter() - start)
    return accuracy(labels, probs.argmax(1)), len(timed) / best
