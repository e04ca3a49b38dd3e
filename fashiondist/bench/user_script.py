"""The baselines of `bench infer`'s end-to-end race: the scripts a user writes without `fashiondist infer`.

It does the same job as `fashiondist infer testX.csv --model model.onnx --out submission.csv` the usual way:
read the CSV with pandas, rebuild the trained PyTorch model from its checkpoint, predict in batches under
`torch.no_grad()`, write `Id,Label` with pandas. Written as a user would, with no tuning in either
direction; the benchmark runs it as its own process (`python SCRIPT CSV CHECKPOINT OUT`), so its time counts
the imports and the model load, as `fashiondist infer`'s does. Its peer with an ONNX model instead of a
checkpoint is the pandas + onnxruntime script (`python SCRIPT CSV MODEL.onnx OUT`).
"""

from __future__ import annotations

from pathlib import Path

SCRIPT_NAME = "predict_pandas_torch.py"

PANDAS_TORCH_SCRIPT = '''\
"""Predict a competition CSV with a trained PyTorch model: python predict_pandas_torch.py CSV CHECKPOINT OUT"""

import sys

import pandas as pd
import torch

from fashiondist.models.checkpoint import load_model

csv_path, checkpoint, out_path = sys.argv[1:4]

df = pd.read_csv(csv_path)
ids = df["Id"].to_numpy()
pixels = df.drop(columns=[c for c in ("Id", "Label") if c in df.columns]).to_numpy(dtype="uint8")

model, meta = load_model(checkpoint)  # the model class rebuilt from model.json, weights from safetensors
model.eval()

images = torch.from_numpy(pixels).reshape(-1, 1, 28, 28)  # the model normalises 0..255 pixels itself
predictions = []
with torch.no_grad():
    for start in range(0, len(images), 1024):
        logits = model(images[start : start + 1024])
        predictions.append(logits.argmax(dim=1))

labels = torch.cat(predictions).numpy()
pd.DataFrame({"Id": ids, "Label": labels}).to_csv(out_path, index=False)
print(f"wrote {out_path}: {len(labels)} rows")
'''


ORT_SCRIPT_NAME = "predict_pandas_onnxruntime.py"

# The peer a user with an ONNX model compares `fashiondist infer` with: the same job in ten lines of pandas
# and onnxruntime (its default session: all graph optimisations, onnxruntime's own thread count).
PANDAS_ORT_SCRIPT = '''\
"""Predict a competition CSV with an ONNX model: python predict_pandas_onnxruntime.py CSV MODEL OUT"""

import sys

import numpy as np
import onnxruntime as ort
import pandas as pd

csv_path, model_path, out_path = sys.argv[1:4]

df = pd.read_csv(csv_path)
ids = df["Id"].to_numpy()
pixels = df.drop(columns=[c for c in ("Id", "Label") if c in df.columns]).to_numpy(dtype="uint8")
pixels = pixels.reshape(-1, 1, 28, 28)  # the model normalises 0..255 pixels itself

session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
labels = np.concatenate(
    [session.run(["probs"], {"pixels": pixels[i : i + 1024]})[0].argmax(1) for i in range(0, len(pixels), 1024)]
)
pd.DataFrame({"Id": ids, "Label": labels}).to_csv(out_path, index=False)
print(f"wrote {out_path}: {len(labels)} rows")
'''


def write_script(directory: str | Path) -> Path:
    """Write the pandas + PyTorch baseline script into `directory` and return its path."""
    path = Path(directory) / SCRIPT_NAME
    path.write_text(PANDAS_TORCH_SCRIPT)
    return path


def write_ort_script(directory: str | Path) -> Path:
    """Write the pandas + onnxruntime baseline script into `directory` and return its path."""
    path = Path(directory) / ORT_SCRIPT_NAME
    path.write_text(PANDAS_ORT_SCRIPT)
    return path
