"""The `--provider` choices and the onnxruntime execution providers behind them (import-light: no onnxruntime)."""

from __future__ import annotations

PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")  # auto: CUDA when onnxruntime-gpu sees a GPU, else CPU

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# What each choice asks onnxruntime for, first choice first; the fallbacks only serve nodes the first can't run.
PROVIDER_LISTS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
