"""`infer` parses the next chunk in a background thread while onnxruntime predicts this one: the rows and
the errors still come out in file order, a stopped run leaves no reader thread behind, and the command's
import path stays free of rich and the config module."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fashiondist.errors import CsvError
from fashiondist.inference import open_session, predict_csv
from fashiondist.inference.prefetch import prefetched


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fashiondist-prefetch"]


def _left_running() -> list[threading.Thread]:
    """Reader threads still alive after each was given 10 s to finish (they stop within 0.1 s)."""
    for thread in _readers():
        thread.join(timeout=10)
    return _readers()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_bad_row_raises_after_every_chunk_before_it(
    onnx_model: Path, sample_test_csv: Path, tmp_path: Path, threads: int
):
    """Line 300 repeats line 5's Id: the four 64-row chunks before it (lines 2..257) come out first, then
    its error, exactly as when the chunks are read in the caller's thread (and with batches in flight on
    two parallel runs)."""
    import gzip

    lines = gzip.decompress(sample_test_csv.read_bytes()).decode().splitlines()
    cells = lines[299].split(",")
    cells[0] = lines[4].split(",")[0]
    lines[299] = ",".join(cells)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    model = open_session(onnx_model, "cpu", threads=threads)
    seen = []
    message = rf"bad\.csv, line 300, column 'Id': duplicate Id {cells[0]} \(first on line 5\)$"
    with pytest.raises(CsvError, match=message):
        for chunk in predict_csv(model, bad, chunk_rows=64):
            seen.append(chunk.ids)
    assert [len(ids) for ids in seen] == [64] * 4
    np.testing.assert_array_equal(np.concatenate(seen), [int(line.split(",")[0]) for line in lines[1:257]])
    assert not _left_running()


@pytest.mark.parametrize("threads", [1, 2])
def test_stopping_early_stops_the_reader(onnx_model: Path, sample_test_csv: Path, threads: int):
    model = open_session(onnx_model, "cpu", threads=threads)
    chunks = predict_csv(model, sample_test_csv, chunk_rows=16)
    next(chunks)
    assert len(_readers()) == 1  # reading ahead while the caller holds the first chunk
    chunks.close()
    for thread in _readers():
        thread.join(timeout=10)
    assert not _left_running()


def test_prefetched_keeps_order_and_bounds_the_lead():
    produced = []

    def source():
        for i in range(10):
            produced.append(i)
            yield i

    items = prefetched(source(), depth=2)
    assert next(items) == 0
    for thread in _readers():
        thread.join(timeout=0.5)  # give the reader time to run ahead as far as it may
    assert len(produced) <= 4  # the item handed out, two queued, one waiting to be put
    assert [0, *items] == list(range(10))


def test_infer_imports_neither_rich_nor_the_config_module(
    onnx_model: Path, sample_test_csv: Path, tmp_path: Path
):
    """Loaded modules after a whole `fashiondist infer` run, piped (no progress bar), in a fresh process; with
    the C loop built, pyarrow is not among them either (every segment of the sample is plain)."""
    from fashiondist.data import plaincsv

    code = (
        "import sys; from fashiondist.cli import main; "
        f"main(['infer', {str(sample_test_csv)!r}, '--model', {str(onnx_model)!r}, "
        f"'--out', {str(tmp_path / 'out.csv')!r}, '--provider', 'cpu']); "
        "print(' '.join(sys.modules), file=sys.__stdout__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert "fashiondist.inference.predict" in loaded  # it did run
    assert not {m for m in loaded if m == "rich" or m.startswith("rich.")}
    assert "fashiondist.config" not in loaded
    if plaincsv.plain_parser() is not None:
        assert "pyarrow" not in loaded
    assert "threads (one per usable CPU)" in done.stderr
