"""onnxruntime against PyTorch on real images: the exported graph must give the same probabilities.

For each batch size (1, an odd 7, and 256 by default) both runtimes predict the same real images in batches
of that size; the check passes when every probability agrees within `atol` and every argmax agrees. The
PyTorch side is the engine's own `model_probs` (the trainer's evaluation, TTA included), so the ONNX file
is held to exactly what validation measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch

from fashiondist.config import Tta
from fashiondist.constants import IMAGE_SHAPE, ONNX_INPUT_NAME, ONNX_OUTPUT_NAME
from fashiondist.engine.evaluate import model_probs

PARITY_BATCH_SIZES = (1, 7, 256)
PARITY_ATOL = 1e-5  # max |probability difference|, float32 on both sides
MIN_IMAGES_PER_SIZE = 64  # each size sees max(size, 64) images (batch 7: 9 full batches + one of 1)


@dataclass(frozen=True)
class ParityRow:
    batch_size: int
    images: int
    max_abs_diff: float
    argmax_agreement: float  # fraction of images whose argmax agrees

    def passed(self, atol: float) -> bool:
        return self.max_abs_diff <= atol and self.argmax_agreement == 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def ort_cpu_session(model: bytes | str) -> ort.InferenceSession:
    """A CPU session with every graph optimisation on, as `fashiondist infer` runs the model."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def ort_predict(session: ort.InferenceSession, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """uint8 [N, 1, 28, 28] -> float32 probs [N, K] through `session`, `batch_size` images per call."""
    out = [
        session.run([ONNX_OUTPUT_NAME], {ONNX_INPUT_NAME: pixels[i : i + batch_size]})[0]
        for i in range(0, len(pixels), batch_size)
    ]
    return np.concatenate(out)


def check_parity(
    model: torch.nn.Module,
    session: ort.InferenceSession,
    images: np.ndarray,
    tta: Tta = Tta.NONE,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
    min_images: int = MIN_IMAGES_PER_SIZE,
) -> list[ParityRow]:
    """Compare `session` with eager `model` (float32, CPU, eval) on uint8 `images` [N, 28, 28].

    A batch size larger than the images available repeats them (np.resize) so the size is really run.
    """
    rows = []
    for batch_size in batch_sizes:
        n = max(batch_size, min_images)
        chosen = np.resize(images, (n, *images.shape[1:])) if len(images) < n else images[:n]
        pixels = np.array(chosen).reshape(-1, *IMAGE_SHAPE)  # a writable copy, [n, 28, 28] -> [n, 1, 28, 28]
        ort_probs = ort_predict(session, pixels, batch_size)
        torch_probs = model_probs(model, torch.from_numpy(pixels), batch_size, tta).numpy()
        rows.append(
            ParityRow(
                batch_size=batch_size,
                images=n,
                max_abs_diff=float(np.abs(ort_probs - torch_probs).max()),
                argmax_agreement=float(np.mean(ort_probs.argmax(1) == torch_probs.argmax(1))),
            )
        )
    return rows
