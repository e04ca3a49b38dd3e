"""`infer`'s GPU flags as far as a CPU can check them: the provider options onnxruntime is given, one clear
error line (exit 2) where there is no CUDA, and the IO binding code path on a CPU session."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fashiondist.cli import main
from fashiondist.data.sources import load_data
from fashiondist.inference import open_session, predict_proba
from fashiondist.inference.providers import GpuOptions, provider_list

NO_CUDA = "CUDAExecutionProvider" not in ort.get_available_providers()


def test_tensorrt_options_are_onnxruntimes_own_keys():
    """TensorRT execution provider docs, "Configurations": trt_engine_cache_enable, trt_engine_cache_path,
    trt_fp16_enable; CUDA then CPU stay behind it for the nodes TensorRT does not take."""
    got = provider_list("tensorrt", gpu=GpuOptions(trt_cache_dir="/tmp/trt", trt_fp16=True))
    assert got == [
        (
            "TensorrtExecutionProvider",
            {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": "/tmp/trt",
                "trt_fp16_enable": "True",
            },
        ),
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert provider_list("tensorrt", gpu=GpuOptions(trt_fp16=True))[0] == (
        "TensorrtExecutionProvider",
        {"trt_fp16_enable": "True"},
    )
    assert provider_list("tensorrt") == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_cuda_options():
    assert provider_list("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_list("cuda", exact_fp32=True) == [
        ("CUDAExecutionProvider", {"use_tf32": "0"}),
        "CPUExecutionProvider",
    ]
    assert provider_list("cuda", gpu=GpuOptions(io_binding=True)) == provider_list(
        "cuda"
    )  # a run-time choice


@pytest.mark.parametrize(
    "provider,options,reason",
    [
        ("cpu", GpuOptions(io_binding=True), "--io-binding needs --provider cuda or tensorrt, not cpu"),
        ("auto", GpuOptions(io_binding=True), "--io-binding needs --provider cuda or tensorrt, not auto"),
        ("cuda", GpuOptions(trt_fp16=True), "--trt-cache and --trt-fp16 need --provider tensorrt, not cuda"),
        (
            "cpu",
            GpuOptions(trt_cache_dir="c"),
            "--trt-cache and --trt-fp16 need --provider tensorrt, not cpu",
        ),
        ("tensorrt", GpuOptions(True, "c", True), None),
        ("cuda", GpuOptions(io_binding=True), None),
    ],
)
def test_flags_that_do_not_fit_the_provider(provider, options, reason):
    assert options.check(provider) == reason


def _infer(flags: list[str], onnx_model: Path, csv: Path, out: Path, capsys) -> tuple[int, str]:
    code = main(["infer", str(csv), "--model", str(onnx_model), "--out", str(out), *flags])
    return code, capsys.readouterr().err


@pytest.mark.skipif(not NO_CUDA, reason="onnxruntime has CUDA here: these flags would run")
@pytest.mark.parametrize(
    "flags,start",
    [
        (
            ["--provider", "cuda", "--io-binding"],
            "--provider cuda: this onnxruntime has no CUDAExecutionProvider",
        ),
        (
            ["--provider", "tensorrt", "--io-binding", "--trt-cache", "TRT", "--trt-fp16"],
            "--provider tensorrt: this onnxruntime has no TensorrtExecutionProvider",
        ),
        (["--io-binding"], "--io-binding needs --provider cuda or tensorrt, not auto"),
        (
            ["--provider", "cuda", "--trt-fp16"],
            "--trt-cache and --trt-fp16 need --provider tensorrt, not cuda",
        ),
    ],
)
def test_gpu_flags_without_cuda_are_one_error_line(
    flags, start, onnx_model, sample_test_csv, tmp_path, capsys
):
    flags = [str(tmp_path / "trt") if f == "TRT" else f for f in flags]
    out = tmp_path / "submission.csv"
    code, err = _infer(flags, onnx_model, sample_test_csv, out, capsys)
    assert code == 2
    assert err.startswith(f"fashiondist: error: {start}") and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "trt").exists()


def test_io_binding_path_gives_what_a_plain_run_gives(onnx_model: Path):
    """The bound path, exercised on a CPU session (its output bound to the CPU): the same probabilities."""
    plain = open_session(onnx_model, "cpu", threads=1)
    bound = dataclasses.replace(plain, io_binding=True)
    images = load_data("sample", split="test").images[:37]
    np.testing.assert_array_equal(predict_proba(bound, images, 8), predict_proba(plain, images, 8))


def test_trt_cache_dir_is_created_or_refused_in_one_line(tmp_path: Path):
    from fashiondist.errors import InputError
    from fashiondist.inference.session import _engine_cache_dir

    _engine_cache_dir(tmp_path / "trt" / "engines")
    assert (tmp_path / "trt" / "engines").is_dir()
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(InputError, match=r"^--trt-cache .*file: not a usable directory"):
        _engine_cache_dir(tmp_path / "file")
