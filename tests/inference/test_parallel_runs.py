"""On the CPU a session runs several batches side by side, one onnxruntime thread each (session.thread_plan):
the probabilities, their order and the errors are those of one batch at a time."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from fashiondist.data.sources import load_data
from fashiondist.export.parity import parity_verdict
from fashiondist.inference import open_session, predict_proba
from fashiondist.inference.session import MAX_PARALLEL_RUNS, thread_plan


@pytest.mark.parametrize(
    ("threads", "plan"),
    [
        (1, (1, 1)),
        (2, (2, 1)),
        (MAX_PARALLEL_RUNS, (MAX_PARALLEL_RUNS, 1)),
        (2 * MAX_PARALLEL_RUNS + 1, (MAX_PARALLEL_RUNS, 2)),
    ],
)
def test_thread_plan(threads: int, plan: tuple[int, int]):
    assert thread_plan(threads) == plan


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_data("sample", split="test").images


def test_parallel_batches_equal_one_at_a_time(onnx_model: Path, images: np.ndarray):
    """Each batch runs on one thread either way, so the probabilities are the same bits, in the same order."""
    serial, parallel = open_session(onnx_model, "cpu", threads=1), open_session(onnx_model, "cpu", threads=3)
    assert (serial.runs, parallel.runs) == (1, 3)
    np.testing.assert_array_equal(predict_proba(parallel, images, 7), predict_proba(serial, images, 7))


def test_one_batch_is_cut_across_the_runs(onnx_model: Path, images: np.ndarray):
    """A single call splits its batch into one part per run; batch size may change float32 rounding, so the
    bound is the export's parity rule."""
    serial, parallel = open_session(onnx_model, "cpu", threads=1), open_session(onnx_model, "cpu", threads=3)
    batch = images[:100].reshape(-1, 1, 28, 28)
    probs = parallel.predict_proba(batch)
    assert probs.shape == (100, serial.num_classes)
    assert parity_verdict(serial.predict_proba(batch), probs, batch_size=34).passed
    assert parallel.predict_proba(batch[:1]).shape == (1, serial.num_classes)


def test_an_error_comes_after_every_batch_before_it(onnx_model: Path, images: np.ndarray):
    """A batch onnxruntime refuses (the wrong shape) raises where it stands; the batches before it come out."""
    model = open_session(onnx_model, "cpu", threads=2)
    good = images[:8].reshape(-1, 1, 28, 28)
    batches = [good, good, good, good[:, :, :14], good, good]
    seen = []
    with pytest.raises(Exception, match="pixels"):
        for probs in model.predict_batches(iter(batches)):
            seen.append(probs)
    assert len(seen) == 3


def test_abandoning_the_stream_runs_nothing_more(onnx_model: Path, images: np.ndarray):
    """Closing the generator early cancels what is queued: the batch source is not read to its end."""
    model = open_session(onnx_model, "cpu", threads=2)
    read = []
    lock = threading.Lock()

    def source():
        for i in range(100):
            with lock:
                read.append(i)
            yield images[:4].reshape(-1, 1, 28, 28)

    stream = model.predict_batches(source())
    next(stream)
    stream.close()
    assert len(read) <= 2 * model.runs + 1


def test_csv_batches_flow_across_chunks_in_order(onnx_model: Path, sample_test_csv: Path):
    """Chunks of 64 rows in batches of 7 (a batch never spans two chunks): the same chunks, Ids and bits as
    one run at a time."""
    from fashiondist.inference import predict_csv

    serial, parallel = open_session(onnx_model, "cpu", threads=1), open_session(onnx_model, "cpu", threads=3)
    ours = list(predict_csv(parallel, sample_test_csv, batch_size=7, chunk_rows=64))
    theirs = list(predict_csv(serial, sample_test_csv, batch_size=7, chunk_rows=64))
    assert [len(c.ids) for c in ours] == [len(c.ids) for c in theirs] == [64] * 15 + [40]
    for mine, other in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine.ids, other.ids)
        np.testing.assert_array_equal(mine.probs, other.probs)
