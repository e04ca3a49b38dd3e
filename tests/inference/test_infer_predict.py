"""The inference library without the command line: chunked CSV prediction, the submission writer, providers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fashiondist.data.sources import load_data
from fashiondist.export.parity import parity_verdict
from fashiondist.inference import open_session, open_submission, predict_csv, predict_proba, write_submission

# Numerics-sensitive: CI runs this module again under AVX-512 (no AMX) and AVX2 kernel holds (.ci/run).
pytestmark = pytest.mark.numerics


def test_chunked_stream_equals_one_batch(onnx_model: Path, sample_test_csv: Path, tmp_path: Path):
    """Chunks of 64 rows (the last one partial) and batches of 7 give what one call on every image gives."""
    model = open_session(onnx_model, "cpu", threads=1)
    chunks = list(predict_csv(model, sample_test_csv, batch_size=7, chunk_rows=64))
    assert [len(c.ids) for c in chunks] == [64] * 15 + [40]
    test = load_data("sample", split="test")
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), test.ids)
    # One session, other batchings: onnxruntime's float32 kernels may round differently per batch size, within
    # the export's own parity rule (implied logits within PARITY_TOLERANCE, see export/parity.py).
    chunked = np.concatenate([c.probs for c in chunks])
    assert parity_verdict(predict_proba(model, test.images), chunked, batch_size=7).passed


def test_write_submission_is_atomic_and_ordered(tmp_path: Path):
    out = tmp_path / "submission.csv"
    write_submission(out, np.array([30, 10, 20]), np.array([4, 0, 2], dtype=np.int64))
    assert out.read_text() == "Id,Label\n30,4\n10,0\n20,2\n"
    with pytest.raises(RuntimeError), open_submission(out) as writer:
        writer.write(np.array([1]), np.array([1]))
        raise RuntimeError("a failure half way")
    assert out.read_text() == "Id,Label\n30,4\n10,0\n20,2\n"  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]  # and no temp file is left


def test_auto_provider_is_cpu_without_gpu_onnxruntime(onnx_model: Path):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: auto may pick CUDA")
    assert open_session(onnx_model, "auto").provider == "CPUExecutionProvider"
