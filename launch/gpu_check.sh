#!/usr/bin/env bash
# One prepared command for a GPU machine: print `fashiondist doctor` (doctor.json under $OUT), then train
# every variant in fp32/fp16/bf16 for a few hundred steps, export to ONNX, check onnxruntime (CUDA provider
# when present) against PyTorch, print a table, and write gpu_check.json / gpu_check.md / gpu_check.log
# under $OUT when it is set. Under 8 minutes on one H100.
#
#   bash launch/gpu_check.sh                      # the full check (exit 0: every check passed)
#   GPU_CHECK_SMOKE=1 bash launch/gpu_check.sh    # a CPU-sized smoke run (one variant, a few steps)
#   bash launch/gpu_check.sh --models convnet,resnet9 --steps 400    # options: launch/gpu_check.py --help
#
# Needs a Python with torch, accelerate, onnx, onnxscript and onnxruntime(-gpu); fashiondist need not be
# installed: the repository goes on PYTHONPATH. No network. PYTHON=/path/to/python picks the interpreter.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}

missing=$("$PYTHON" - <<'PY'
import importlib.util
need = ["torch", "accelerate", "onnx", "onnxscript", "onnxruntime", "numpy", "pandas", "safetensors", "rich", "yaml"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PY
)
if [[ -n "$missing" ]]; then
    echo "gpu_check: $PYTHON lacks: $missing" >&2
    exit 2
fi

cd "$repo"
# What this machine is and what fashiondist will do on it (precision auto, onnxruntime providers), first.
"$PYTHON" -m fashiondist doctor || echo "gpu_check: fashiondist doctor failed (see above)" >&2
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    "$PYTHON" -m fashiondist doctor --json >"$OUT/doctor.json" || true
fi
exec "$PYTHON" launch/gpu_check.py "$@"
