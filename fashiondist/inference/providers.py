"""The `--provider` choices and the onnxruntime execution providers behind them (import-light: no onnxruntime)."""

from __future__ import annotations

from dataclasses import dataclass

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
GPU_PROVIDERS = ("cuda", "tensorrt")


@dataclass(frozen=True)
class GpuOptions:
    """`infer`'s GPU flags: IO binding (CUDA and TensorRT) and TensorRT's engine cache and fp16 mode."""

    io_binding: bool = False  # run through an IOBinding: the output stays on the device until copied once
    trt_cache_dir: str | None = None  # TensorRT engine cache directory (engines are built once, then loaded)
    trt_fp16: bool = False  # let TensorRT pick fp16 kernels (the graph itself may stay fp32)

    def check(self, provider: str) -> str | None:
        """Why these options do not fit `provider`, or None when they do."""
        if self.io_binding and provider not in GPU_PROVIDERS:
            return f"--io-binding needs --provider cuda or tensorrt, not {provider}"
        if (self.trt_cache_dir or self.trt_fp16) and provider != "tensorrt":
            return f"--trt-cache and --trt-fp16 need --provider tensorrt, not {provider}"
        return None


def provider_list(
    provider: str, exact_fp32: bool = False, gpu: GpuOptions | None = None
) -> list[str | tuple[str, dict[str, str]]]:
    """The `providers=` list for onnxruntime.InferenceSession: names, with an options dict where there are any.

    Option names and values are onnxruntime's own (string values, as its Python API passes them):
    CUDA `use_tf32` (since onnxruntime 1.16); TensorRT `trt_engine_cache_enable`, `trt_engine_cache_path`,
    `trt_fp16_enable` (TensorRT execution provider docs, "Configurations").
    """
    gpu = gpu or GpuOptions()
    options: dict[str, dict[str, str]] = {}
    if exact_fp32:
        options[ORT_PROVIDERS["cuda"]] = {"use_tf32": "0"}
    trt: dict[str, str] = {}
    if gpu.trt_cache_dir:
        trt |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(gpu.trt_cache_dir)}
    if gpu.trt_fp16:
        trt["trt_fp16_enable"] = "True"
    if trt:
        options[ORT_PROVIDERS["tensorrt"]] = trt
    return [(name, options[name]) if name in options else name for name in PROVIDER_LISTS[provider]]
