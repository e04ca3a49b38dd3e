"""onnxruntime batch inference and the submission CSV. No torch: numpy, pyarrow and onnxruntime only.

    from fashiondist.inference import open_session, predict_proba, write_submission
    model = open_session("model.onnx", provider="auto")
    probs = predict_proba(model, images)            # uint8 [N, 28, 28] -> float32 [N, K]
    write_submission("submission.csv", ids, probs.argmax(1))

The names below load on first use, so `fashiondist.inference.providers` (the CLI's choices) stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ChunkPrediction": "predict",
    "predict_csv": "predict",
    "predict_proba": "predict",
    "REQUIRED_METADATA": "session",
    "ModelSession": "session",
    "open_session": "session",
    "SubmissionWriter": "submission",
    "open_submission": "submission",
    "write_submission": "submission",
    "PROVIDER_CHOICES": "providers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
