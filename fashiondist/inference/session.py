"""An onnxruntime session over a fashiondist ONNX model, with the model contract checked up front.

The contract: one input `pixels`, uint8 [N, 1, 28, 28] with N dynamic; an output `probs`, float32
[N, K]; metadata_props naming the package version, the model variant, K, the class names and the validation
accuracy. A file that breaks it is refused with one InputError line naming the file, before any row is read.

Torch-free: numpy and onnxruntime only, so inference runs where nothing else is installed.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fashiondist.constants import IMAGE_SHAPE, ONNX_INPUT_NAME, ONNX_OUTPUT_NAME, Tta
from fashiondist.errors import InputError
from fashiondist.hardware import usable_cores
from fashiondist.inference.providers import (
    ORT_PROVIDERS,
    PROVIDER_CHOICES,
    PROVIDER_LISTS,
    GpuOptions,
    provider_list,
)

# metadata_props keys every fashiondist model carries; fashiondist/export writes them (its tests open every
# exported model through `open_session`, which holds the two sides together).
REQUIRED_METADATA = ("fashiondist_version", "model", "num_classes", "class_names", "val_accuracy")
_REEXPORT_HINT = "re-export it with `fashiondist export`"
_REPR = reprlib.Repr()  # a metadata value in a message: quoted, a long one cut in the middle
_REPR.maxstring = 60

# On the CPU, batches run side by side, one onnxruntime thread each, rather than one batch at a time across
# all threads: a small convnet's operators are too short to split well, and every operator split is a barrier
# that waits for its slowest thread (a thread the CSV reader has just taken the core of). Measured on 2 cores
# (Intel Xeon, AMX + VNNI), cnn-dropout, 20,000 images at batch 128, best of 5: fp32 22,216 vs 21,435
# images/s, int8 48,408 vs 38,061. Above this many runs each run gets threads // runs intra-op threads
# (unmeasured there: the machines at hand have 2 cores).
MAX_PARALLEL_RUNS = 8

_GPU_HINT = "install onnxruntime-gpu (`pip install 'fashiondist[gpu]'`) on a machine with an NVIDIA GPU and CUDA, or use --provider cpu"

# onnxruntime's load failures that mean "this file is not a model we can read" (bad input, exit 2).
_LOAD_ERROR_NAMES = (
    "InvalidProtobuf",
    "InvalidArgument",
    "InvalidGraph",
    "Fail",
    "NotImplemented",
    "NoModel",
)
_LOAD_ERRORS = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in _LOAD_ERROR_NAMES
    if hasattr(ort.capi.onnxruntime_pybind11_state, name)
)


class ProviderUnavailable(InputError):
    """An explicit --provider that this machine or this onnxruntime cannot start (`auto` falls back to CPU)."""


@dataclass(frozen=True)
class ModelSession:
    """A checked session: `predict_proba` maps uint8 [N, 1, 28, 28] to float32 [N, K]."""

    path: Path
    session: ort.InferenceSession = field(repr=False)
    provider: str  # the onnxruntime provider that runs the graph (the session's first)
    num_classes: int
    class_names: tuple[str, ...]
    metadata: dict[str, str]  # every field checked (check_metadata): safe to show or parse
    val_accuracy: float | None  # metadata val_accuracy: 0..1, None when the checkpoint had no metric
    io_binding: bool = False  # run through an IOBinding (CUDA, TensorRT): `probs` allocated on the device
    runs: int = 1  # batches onnxruntime runs at once (CPU: one thread each, see MAX_PARALLEL_RUNS)
    pool: ThreadPoolExecutor | None = field(default=None, repr=False, compare=False)  # the runs' threads

    @property
    def model_name(self) -> str:
        return self.metadata["model"]

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """One batch; with parallel runs it is cut into one part per run, and the parts run side by side."""
        if self.pool is None or len(pixels) < 2:
            return self._run(pixels)
        size = -(-len(pixels) // self.runs)
        parts = [pixels[start : start + size] for start in range(size, len(pixels), size)]
        others = [self.pool.submit(self._run, part) for part in parts]
        first = self._run(pixels[:size])  # the caller runs the first part: one thread handoff fewer
        return np.concatenate([first, *(future.result() for future in others)])

    def predict_batches(self, batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """The probabilities of each batch, in order; with parallel runs, up to two per run in flight (no barrier
        between batches, and memory bounded whatever the number of batches).

        An error from `batches` itself (a malformed CSV row) is raised after the results of every batch it gave
        before; closing this generator early cancels what is queued and closes `batches`.
        """
        pending: deque = deque()
        try:
            if self.pool is None:
                yield from map(self._run, batches)
                return
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except Exception:
                    while pending:
                        yield pending.popleft().result()
                    raise
                if len(pending) >= 2 * self.runs:
                    yield pending.popleft().result()
                pending.append(self.pool.submit(self._run, batch))
            while pending:
                yield pending.popleft().result()
        finally:  # an error or an abandoned generator: nothing queued runs on
            for future in pending:
                future.cancel()
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        if self.io_binding:
            probs = self._run_bound(pixels)
        else:
            probs = self.session.run([ONNX_OUTPUT_NAME], {ONNX_INPUT_NAME: pixels})[0]
        check_output_shape(self, probs, len(pixels))
        return probs

    def _run_bound(self, pixels: np.ndarray) -> np.ndarray:
        """One batch through an IOBinding: the uint8 input bound from host memory (onnxruntime copies it to the
        device), `probs` allocated by the provider on its device and copied back once. Whether it beats a plain
        `run` on a given GPU is what launch/gpu_check.py measures."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(ONNX_INPUT_NAME, np.ascontiguousarray(pixels))
        # The device the provider allocates on; "cpu" only where a test binds a CPU session (same code path).
        binding.bind_output(ONNX_OUTPUT_NAME, "cpu" if self.provider == ORT_PROVIDERS["cpu"] else "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def check_output_shape(model: ModelSession, probs: np.ndarray, rows: int) -> None:
    """InputError unless the model's output for a batch of `rows` images is [rows, K]: a foreign graph whose
    `probs` is [1, K] whatever the batch would be broadcast to every row (each would get row 0's label)."""
    expected = (rows, model.num_classes)
    if probs.shape != expected:
        raise InputError(
            f"{model.path}: output {ONNX_OUTPUT_NAME!r} is {list(probs.shape)} for a batch of {rows} images, "
            f"expected {list(expected)} (one row of {model.num_classes} class probabilities per image)",
            hint="the model does not follow the fashiondist contract; export it with `fashiondist export`",
        )


def default_threads() -> int:
    """onnxruntime's threads when --threads is not given: one per CPU this process may use (affinity and
    cgroup quota, as `doctor` reads them). onnxruntime's own default counts the host's cores and ignores a
    container's CPU limit (onnxruntime issue 29510): 64 threads time-sliced onto 2 CPUs."""
    return usable_cores() or 1


def thread_plan(threads: int) -> tuple[int, int]:
    """(runs, intra-op threads per run) for `threads` CPU threads: one run per thread up to MAX_PARALLEL_RUNS."""
    runs = max(1, min(threads, MAX_PARALLEL_RUNS))
    return runs, max(1, threads // runs)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """`threads`: onnxruntime's intra-op threads for one run (default: one per usable CPU)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: provider fallbacks are reported by us, in one line
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    # Idle workers sleep instead of spinning: `infer` parses the next chunk on the same cores meanwhile, and a
    # spinning pool starves it (10k rows, 2 cores, under load: 3.80 s with sleeping workers vs 5.55 s).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(
    path: str | os.PathLike,
    provider: str = "auto",
    threads: int | None = None,
    exact_fp32: bool = False,
    gpu: GpuOptions | None = None,
) -> ModelSession:
    """Open `path` on `provider` (auto, cpu, cuda, tensorrt) and check the fashiondist contract.

    `auto` takes CUDA when onnxruntime-gpu sees a GPU, else the CPU. An explicit GPU provider that
    onnxruntime lacks, or that falls back to the CPU when the session starts, is an error, never a quiet
    CPU run. `exact_fp32` turns TF32 off on the CUDA provider (for parity checks against strict fp32).
    `gpu`: IO binding and TensorRT's options (`providers.GpuOptions`); they need an explicit GPU provider.
    """
    gpu = gpu or GpuOptions()
    path = Path(path)
    if provider not in PROVIDER_CHOICES:
        raise InputError(f"--provider {provider!r}: not one of {', '.join(PROVIDER_CHOICES)}")
    if not path.exists():
        raise InputError(f"{path}: model file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an ONNX model file", hint="pass the .onnx file")
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be at least 1")
    mismatch = gpu.check(provider)
    if mismatch:
        raise InputError(mismatch, hint="--provider cuda or tensorrt on a machine with an NVIDIA GPU")

    runs, per_run = thread_plan(threads or default_threads())
    if provider == "cpu":
        return _checked(_create(path, PROVIDER_LISTS["cpu"], per_run), path, runs=runs)
    if provider == "auto":
        try:  # onnxruntime-gpu without a usable GPU or CUDA libraries: the CPU, as `auto` promises
            session = _create_on_gpu(path, "cuda", threads, exact_fp32)
        except ProviderUnavailable:
            return _checked(_create(path, PROVIDER_LISTS["cpu"], per_run), path, runs=runs)
    else:
        session = _create_on_gpu(path, provider, threads, exact_fp32, gpu)
    return _checked(session, path, gpu.io_binding)  # a GPU: one batch at a time, the device's own parallelism


def open_model_bytes(model: bytes, path: str | os.PathLike) -> ModelSession:
    """A CPU session over a model still in memory, to be written to `path` (named in errors), contract checked.

    What the export stage's checks run before anything is written, on the same options as `infer --provider cpu`.
    """
    path = Path(path)
    runs, per_run = thread_plan(default_threads())
    return _checked(_create(path, PROVIDER_LISTS["cpu"], per_run, model), path, runs=runs)


def _checked(
    session: ort.InferenceSession, path: Path, io_binding: bool = False, runs: int = 1
) -> ModelSession:
    metadata, (num_classes, class_names, val_accuracy) = check_contract(session, path)
    return ModelSession(
        path,
        session,
        session.get_providers()[0],
        num_classes,
        class_names,
        metadata,
        val_accuracy,
        io_binding,
        runs,
        ThreadPoolExecutor(runs, thread_name_prefix="fashiondist-run") if runs > 1 else None,
    )


def _create(
    path: Path, providers: list, threads: int | None, model: bytes | None = None
) -> ort.InferenceSession:
    """A session over `model` (serialised bytes) when given, else over the file `path`."""
    source = str(path) if model is None else model
    try:
        return ort.InferenceSession(source, sess_options=session_options(threads), providers=providers)
    except _LOAD_ERRORS as err:
        reason = str(err).split("failed:", 1)[-1].strip().replace("\n", " ")
        raise InputError(f"{path}: not a readable ONNX model ({reason})") from None


def _create_on_gpu(
    path: Path, provider: str, threads: int | None, exact_fp32: bool, gpu: GpuOptions | None = None
) -> ort.InferenceSession:
    """A session whose first provider is `provider`'s (cuda, tensorrt); ProviderUnavailable if it can't start."""
    wanted, available = ORT_PROVIDERS[provider], ort.get_available_providers()
    if wanted not in available:
        raise ProviderUnavailable(
            f"--provider {provider}: this onnxruntime has no {wanted} (it has {', '.join(available)})",
            hint=_GPU_HINT,
        )
    if gpu and gpu.trt_cache_dir:  # only once TensorRT is there: a refused run creates nothing
        _engine_cache_dir(Path(gpu.trt_cache_dir))
    try:
        session = _create(path, provider_list(provider, exact_fp32, gpu), threads)
    except InputError:
        raise
    except Exception as err:  # a missing CUDA/cuDNN/TensorRT library, no device: onnxruntime says which
        reason = " ".join(str(err).split())
        raise ProviderUnavailable(
            f"--provider {provider}: onnxruntime could not start {wanted} ({reason})", hint=_GPU_HINT
        ) from None
    if session.get_providers()[0] != wanted:
        raise ProviderUnavailable(
            f"--provider {provider}: onnxruntime could not start {wanted} for {path} "
            f"and fell back to {session.get_providers()[0]}",
            hint=_GPU_HINT,
        )
    return session


def _engine_cache_dir(directory: Path) -> None:
    """Create `--trt-cache DIR` (TensorRT writes its engines there); InputError if it is not a directory."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--trt-cache {directory}: not a usable directory ({err.strerror})") from None


def check_contract(
    session: ort.InferenceSession, path: Path
) -> tuple[dict[str, str], tuple[int, tuple[str, ...], float | None]]:
    """(metadata, check_metadata's facts) of a session that keeps the contract; InputError otherwise."""
    inputs = session.get_inputs()
    expected_in = f"one input {ONNX_INPUT_NAME!r}, uint8 [N, {', '.join(map(str, IMAGE_SHAPE))}]"
    got_in = ", ".join(f"{i.name!r} {i.type} {_shape(i.shape)}" for i in inputs)
    if len(inputs) != 1 or inputs[0].name != ONNX_INPUT_NAME:
        raise InputError(f"{path}: the model's inputs are {got_in}; a fashiondist model has {expected_in}")
    pixels = inputs[0]
    if pixels.type != "tensor(uint8)" or len(pixels.shape) != 4 or tuple(pixels.shape[1:]) != IMAGE_SHAPE:
        raise InputError(f"{path}: the model's input is {got_in}; a fashiondist model has {expected_in}")
    if isinstance(pixels.shape[0], int):
        raise InputError(
            f"{path}: input {ONNX_INPUT_NAME!r} has a fixed batch size of {pixels.shape[0]}; "
            "a fashiondist model has a dynamic batch dimension",
            hint="re-export it with `fashiondist export`",
        )

    outputs = {o.name: o for o in session.get_outputs()}
    probs = outputs.get(ONNX_OUTPUT_NAME)
    if probs is None or probs.type != "tensor(float)" or len(probs.shape) != 2:
        got_out = ", ".join(f"{o.name!r} {o.type} {_shape(o.shape)}" for o in outputs.values())
        raise InputError(
            f"{path}: the model's outputs are {got_out}; a fashiondist model has an output "
            f"{ONNX_OUTPUT_NAME!r}, float32 [N, K]"
        )

    metadata = dict(session.get_modelmeta().custom_metadata_map)
    facts = check_metadata(metadata, path)
    num_classes = facts[0]
    if isinstance(probs.shape[1], int) and probs.shape[1] != num_classes:
        raise InputError(
            f"{path}: output {ONNX_OUTPUT_NAME!r} has {probs.shape[1]} columns but the metadata says {num_classes} classes"
        )
    return metadata, facts


def check_metadata(metadata: dict[str, str], path: Path) -> tuple[int, tuple[str, ...], float | None]:
    """(num_classes, class_names, val_accuracy) of metadata_props whose every fashiondist field holds what
    export writes.

    Checked before any row is read or any file written: each field, required or optional, is one InputError
    naming the key and its value, so nothing downstream (the run summary, a benchmark) parses a bad one.
    """
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise InputError(
            f"{path}: not a fashiondist model: its metadata lacks {', '.join(missing)}",
            hint="export it with `fashiondist export`",
        )
    num_classes = _metadata_field(metadata, "num_classes", path, _count, "an integer of at least 2", least=2)
    class_names = _metadata_field(
        metadata,
        "class_names",
        path,
        _names,
        f"a JSON list of {num_classes} distinct class names",
        k=num_classes,
    )
    val_accuracy = _metadata_field(metadata, "val_accuracy", path, _accuracy, "null or a number in 0..1")
    for key in ("fashiondist_version", "model", "quantization"):
        _metadata_field(metadata, key, path, _text, "a non-empty name")
    _metadata_field(metadata, "model_kwargs", path, _mapping, "a JSON object")
    _metadata_field(metadata, "tta", path, Tta, f"one of {', '.join(t.value for t in Tta)}")
    for key in ("epoch", "opset", "calibration_images"):
        _metadata_field(metadata, key, path, _count, "a whole number", least=0)
    return num_classes, tuple(class_names), val_accuracy


def _metadata_field(metadata: dict[str, str], key: str, path: Path, parse, expected: str, **limits):
    """`parse(value, **limits)` of metadata `key` (None when absent); InputError when it raises ValueError."""
    if key not in metadata:
        return None
    try:
        return parse(metadata[key], **limits)
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError; RecursionError: [[[[...]]]]
        raise InputError(
            f"{path}: metadata {key} = {_REPR.repr(metadata[key])} is not {expected}", hint=_REEXPORT_HINT
        ) from None


def _count(text: str, least: int) -> int:
    if not re.fullmatch(r"[0-9]{1,18}", text) or int(text) < least:
        raise ValueError(text)
    return int(text)


def _names(text: str, k: int) -> list[str]:
    names = json.loads(text)  # a JSON string (one name, or a list encoded twice) is refused, not split
    if not isinstance(names, list) or not all(isinstance(name, str) and name.strip() for name in names):
        raise ValueError(text)
    if len(names) != k or len(set(names)) != k:
        raise ValueError(text)
    return names


def _accuracy(text: str) -> float | None:
    value = json.loads(text)  # NaN and Infinity parse, and are refused below
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return float(value)


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError(text)
    return text


def _mapping(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(text)
    return value


def _shape(shape: list) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"
