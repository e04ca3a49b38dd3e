"""Which ONNX opsets `fashiondist export --opset` can write and onnxruntime can run, derived from what is
installed (never a list that ages with the next release):

- the lowest is the torch exporter's own opset (torch.export emits that opset; any other goes through onnx's
  version converter, which cannot take common ops below it: opset 7 failed and silently kept 18);
- the highest is the newest opset both the installed onnx knows and the installed onnxruntime loads (probed
  with a one-node model, newest first: a few milliseconds).
"""

from __future__ import annotations

import functools

from fashiondist.errors import InputError

# torch's dynamo exporter emits this opset natively (torch.onnx._internal.exporter._constants.TORCHLIB_OPSET)
_TORCH_NATIVE_FALLBACK = 18


@functools.cache
def supported_opsets() -> range:
    """The opsets export writes as asked and onnxruntime runs."""
    import onnx

    try:
        from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET as low
    except ImportError:  # a torch that moved it: the exporter's documented native opset
        low = _TORCH_NATIVE_FALLBACK
    high = onnx.defs.onnx_opset_version()
    while high > low and not _runtime_loads(high):
        high -= 1
    return range(low, high + 1)


def check_opset(opset: int | None) -> None:
    """InputError naming --opset when export could not write `opset` as asked or onnxruntime could not run it."""
    if opset is None:
        return
    ok = supported_opsets()
    if opset not in ok:
        raise InputError(
            f"--opset {opset}: not supported here; the installed exporter and onnxruntime take {ok.start}..{ok.stop - 1}",
            hint="leave --opset out for the exporter's default",
        )


def _runtime_loads(opset: int) -> bool:
    """Whether onnxruntime loads a one-node model of `opset`."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [value],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own pybind error types for an unknown opset or IR version
        return False
    return True
