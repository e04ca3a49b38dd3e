"""The exported graph and its checks: `ProbsHead(model)` to ONNX, and onnxruntime against PyTorch.

The graph is `models.tta.ProbsHead(model)`: uint8 `pixels` [N, 1, 28, 28] -> the model (which normalises
inside) -> softmax -> float32 `probs` [N, K]; with flip TTA it averages the image and its mirror. It is
exported with torch.export (`dynamo=True`) from the unwrapped float32 CPU model in eval mode, with a dynamic
batch dimension (the example batch is 2: an example of 1 would specialise N to 1), as one self-contained
proto whose metadata_props say what the model is. An fp16 graph (`export --precision fp16`) is the same
head over a `.half()` copy: the model normalises into fp16 and the head casts the logits to float32 before the
softmax, so the contract does not change.

Parity: for each batch size (1, an odd 7, and 256 by default) both runtimes predict the same real images in
batches of that size; `export.parity.parity_verdict` judges them (float32 tolerance on the implied logits,
every argmax equal). The
onnxruntime side is the inference stage's own session and batching (its contract check included); the
PyTorch side is the engine's `model_probs`, so the file is held to exactly what validation measured.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from fashiondist import __version__
from fashiondist.config import Tta
from fashiondist.constants import IMAGE_SHAPE, ONNX_INPUT_NAME, ONNX_OUTPUT_NAME, PIXEL_MAX
from fashiondist.engine.evaluate import model_probs
from fashiondist.errors import FashiondistError
from fashiondist.export.parity import PARITY_TOLERANCE, ParityRow, ParityTolerance, parity_verdict
from fashiondist.inference.predict import predict_proba
from fashiondist.inference.session import ModelSession
from fashiondist.models.base import Classifier
from fashiondist.models.tta import ProbsHead, tta_probs

EXAMPLE_BATCH = 2  # torch.export specialises a dimension whose example size is 0 or 1: keep N >= 2
PARITY_BATCH_SIZES = (1, 7, 256)
MIN_IMAGES_PER_SIZE = 64  # each size sees max(size, 64) images (batch 7: 9 full batches + one of 1)


def model_metadata(
    meta: Mapping[str, Any], tta: Tta = Tta.NONE, run: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """metadata_props for a checkpoint's `model.json` meta (name, kwargs, num_classes, class_names, metric)
    and, from its run's run.json (`run`), the training data's sha256 and the commit the run was made from."""
    val_acc = (meta.get("metric") or {}).get("val_acc")
    metadata = {
        "fashiondist_version": __version__,
        "model": str(meta["name"]),
        "model_kwargs": json.dumps(meta.get("kwargs") or {}, sort_keys=True),
        "num_classes": str(int(meta["num_classes"])),
        "class_names": json.dumps(list(meta["class_names"])),
        # measured in PyTorch on the run's validation split; "null" when the checkpoint has no metric
        "val_accuracy": json.dumps(None if val_acc is None else float(val_acc)),
        "tta": Tta(tta).value,
        "quantization": "none",
        "input": f"{ONNX_INPUT_NAME}: uint8 [N, {', '.join(map(str, IMAGE_SHAPE))}], pixels 0..{PIXEL_MAX}; "
        "normalisation is inside the graph",
        "output": f"{ONNX_OUTPUT_NAME}: float32 [N, K] class probabilities (softmax)",
    }
    if meta.get("epoch") is not None:
        metadata["epoch"] = str(meta["epoch"])
    metadata.update(run_provenance(run))
    return metadata


def run_provenance(run: Mapping[str, Any] | None) -> dict[str, str]:
    """`data_sha256` and `run_commit` (`<sha>`, `<sha>-dirty`, or `unknown (why)`) of a run.json record."""
    if run is None:
        unknown = "unknown (the checkpoint's run has no run.json)"
        return {"data_sha256": unknown, "run_commit": unknown}
    package = run["environment"]["fashiondist"]
    commit = package["commit"]
    if commit is None:
        commit = f"unknown ({package['note']})"
    elif package["dirty"]:
        commit += "-dirty"
    return {"data_sha256": run["data"]["sha256"], "run_commit": commit}


def to_onnx(
    model: nn.Module, metadata: Mapping[str, str], opset: int | None = None, tta: Tta = Tta.NONE
) -> onnx.ModelProto:
    """Export `ProbsHead(model)` with a dynamic batch; returns the model proto with `metadata` attached.

    `model` is the plain module, float32, on the CPU, in eval mode (`export_model` prepares a copy so).
    """
    head = ProbsHead(model, tta).eval()
    example = torch.zeros(EXAMPLE_BATCH, *IMAGE_SHAPE, dtype=torch.uint8)
    batch = torch.export.Dim("batch")
    try:
        # torch.onnx prints its progress on stdout, which belongs to our results: capture it.
        with contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(
                head,
                (example,),
                dynamo=True,
                input_names=[ONNX_INPUT_NAME],
                output_names=[ONNX_OUTPUT_NAME],
                dynamic_shapes={"pixels": {0: batch}},
                opset_version=opset,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # torch.export / onnxscript raise many types; one line is what the user needs
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FashiondistError(
            f"torch.onnx.export failed for model {metadata.get('model')!r}: {first}"
        ) from err
    proto = program.model_proto
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim0.dim_param:
        raise FashiondistError(
            f"the exported input {ONNX_INPUT_NAME!r} has a fixed batch size {dim0.dim_value}"
        )
    opset_used = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and opset_used != opset:  # the converter failed and torch kept its own opset
        raise FashiondistError(f"torch.onnx.export wrote opset {opset_used}, not the {opset} asked for")
    props = {
        **metadata,
        "opset": str(opset_used),
        "torch_version": torch.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = (
        f"fashiondist {metadata.get('model')} classifier: uint8 pixels [N,1,28,28] -> probs [N,K]"
    )
    return proto


def check_parity(
    model: torch.nn.Module,
    session: ModelSession,
    images: np.ndarray,
    tta: Tta = Tta.NONE,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
    min_images: int = MIN_IMAGES_PER_SIZE,
    tolerance: ParityTolerance = PARITY_TOLERANCE,
) -> list[ParityRow]:
    """Compare `session` with eager `model` (float32, CPU, eval) on uint8 `images` [N, 28, 28].

    A batch size larger than the images available repeats them (np.resize) so the size is really run. Each
    size sees the first max(size, min_images) images of one set: the logits' sizes are measured once, on all.
    """
    most = max(max(batch_sizes), min_images)
    chosen = np.resize(images, (most, *images.shape[1:])) if len(images) < most else images[:most]
    every = np.array(chosen).reshape(-1, *IMAGE_SHAPE)  # a writable copy, [n, 28, 28] -> [n, 1, 28, 28]
    scale = logit_magnitude(model, torch.from_numpy(every), tta)
    rows = []
    for batch_size in batch_sizes:
        n = max(batch_size, min_images)
        pixels = every[:n]
        ort_probs = predict_proba(session, pixels, batch_size)
        torch_probs = model_probs(model, torch.from_numpy(pixels), batch_size, tta).numpy()
        rows.append(parity_verdict(torch_probs, ort_probs, batch_size, tolerance, scale[:n]))
    return rows


@torch.no_grad()
def logit_magnitude(model: nn.Module, pixels: torch.Tensor, tta: Tta = Tta.NONE) -> np.ndarray:
    """Each image's largest |logit| [N] over every classifier in `model` (an ensemble's members) and every
    view of `tta`: the size float32 rounds the logits relative to (see export.parity)."""
    n = len(pixels)
    top = torch.zeros(n)

    def record(module: nn.Module, inputs: Any, logits: torch.Tensor) -> None:
        if logits.ndim == 2 and len(logits) % n == 0:  # [views x N, K], the views stacked along the batch
            top.copy_(torch.maximum(top, logits.detach().float().abs().amax(1).reshape(-1, n).amax(0).cpu()))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, Classifier)]
    was_training = model.training
    try:
        tta_probs(model.eval(), pixels, tta)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return top.numpy()
