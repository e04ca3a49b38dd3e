"""The compiled plain-row parser (data/plaincsv.py, a loop in C) against pyarrow, the reader it stands in for.

Its contract: for any segment it either returns None (pyarrow then reads the segment, errors and all) or the
arrays pyarrow would have produced. Checked on the fuzz module's files (broken and respelled rows, every kind
of line end, spliced bytes), segment by segment, and on a clean file read with pyarrow switched off (so the
compiled path really carries plain files) and with the extension absent (so pyarrow alone still reads
everything). An install without a C compiler has no extension: there these tests skip, except under CI=true,
where the extension must have been built.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from extensions import require_built
from hypothesis import given, settings
from test_data_csvio_fuzz import FUZZ, _written, fuzzed_file, numeric_file

from fashiondist import constants
from fashiondist.data import csvio, plaincsv
from fashiondist.data.csvio import iter_csv_chunks, read_competition_csv, write_competition_csv
from fashiondist.data.plaincsv import plain_parser
from fashiondist.data.sources import load_data

_sample = load_data("sample")


def _compiled():
    """The compiled parser; a skip where the extension was not built (a failure under CI=true)."""
    return require_built(plain_parser(), "fashiondist.data._plainrows")


def test_the_extension_shares_the_package_constants():
    _compiled()
    from fashiondist.data import _plainrows

    assert (_plainrows.NUM_PIXELS, _plainrows.PIXEL_MAX) == (constants.NUM_PIXELS, constants.PIXEL_MAX)


def _segments_agree(path) -> tuple[int, int]:
    """Parse every segment of `path` both ways; where the compiled parser accepts one, pyarrow must read the
    same arrays. Returns (segments it accepted, segments)."""
    parse = _compiled()
    layout = csvio._layout(path, None, None)
    accepted = total = 0
    for data, start, end in csvio._segments(layout, csvio._SEGMENT_BYTES):
        segment = memoryview(data)[start:end]
        total += 1
        plain = parse(segment, layout.labelled)
        if plain is None:
            continue
        accepted += 1
        arrow = csvio._to_csv_table(
            pacsv.read_csv(pa.BufferReader(segment), **csvio._arrow_options(layout)), layout
        )
        ids, labels, pixels = plain
        np.testing.assert_array_equal(ids, arrow.ids)
        np.testing.assert_array_equal(pixels.reshape(-1, 28, 28), arrow.images)
        if layout.labelled:
            np.testing.assert_array_equal(labels, arrow.labels)
        else:
            assert labels is None
    return accepted, total


@settings(FUZZ, max_examples=500)
@given(fuzzed_file())
def test_what_the_compiled_parser_accepts_pyarrow_reads_the_same(case: tuple[bytes, int]):
    data, segment_bytes = case
    with _written(data, segment_bytes) as path:
        try:
            _segments_agree(path)
        except csvio.CsvError:
            pass  # a header the layout refuses: no segment is read at all
        except (pa.ArrowInvalid, OSError, EOFError):
            pass  # pyarrow refused a segment the compiled parser also refused, or a cut gzip stream


@settings(FUZZ, max_examples=300)
@given(numeric_file())
def test_the_compiled_parser_refuses_every_spelling_that_is_not_plain_digits(case: tuple[bytes, bool]):
    data, _ = case
    with _written(data, csvio._SEGMENT_BYTES) as path, contextlib.suppress(pa.ArrowInvalid):
        _segments_agree(path)


@pytest.fixture
def compiled():
    return _compiled()


def _csv(tmp_path, rows: int, labelled: bool, line_end: str = "\n", final_end: bool = True):
    path = tmp_path / "plain.csv"
    ids = 7 + np.arange(rows, dtype=np.int64) * 1_000_003
    labels = _sample.labels[:rows] if labelled else None
    write_competition_csv(path, ids, _sample.images[:rows], labels)
    text = path.read_bytes().replace(b"\n", line_end.encode())
    path.write_bytes(text if final_end else text.rstrip(b"\r\n"))
    return path, ids, labels


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("line_end,final_end", [("\n", True), ("\r\n", True), ("\n", False)])
def test_a_plain_file_is_read_without_pyarrow(compiled, tmp_path, labelled, line_end, final_end):
    """With pyarrow's reader made to fail, a plain file (LF or CRLF, with or without a final line end,
    segments cutting rows mid-way) still reads exactly: the compiled parser carried every segment."""
    path, ids, labels = _csv(tmp_path, 300, labelled, line_end, final_end)
    with (  # ~40 rows a segment, cut mid-row
        mock.patch.object(csvio, "_SEGMENT_BYTES", 100_000),
        mock.patch.object(csvio, "_PLAIN_SEGMENT_BYTES", 100_000),
    ):
        with mock.patch.object(pacsv, "read_csv", side_effect=AssertionError("pyarrow was used")):
            chunks = list(iter_csv_chunks(path, chunk_rows=64))
        accepted, segments = _segments_agree(path)  # pyarrow reads the same arrays from each
    assert accepted == segments >= 5  # ~470 KB in segments of 100,000 bytes
    assert [len(c) for c in chunks] == [64, 64, 64, 64, 44]
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), ids)
    np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), _sample.images[:300])
    if labelled:
        np.testing.assert_array_equal(np.concatenate([c.labels for c in chunks]), labels)


def test_a_segment_the_compiled_parser_refuses_goes_to_pyarrow(compiled, tmp_path):
    """One padded cell (` 12`, which pyarrow reads as 12) sends its segment to pyarrow and no other."""
    path, ids, _ = _csv(tmp_path, 200, labelled=False)
    lines = path.read_bytes().split(b"\n")
    cells = lines[150].split(b",")
    cells[300] = b" " + cells[300]
    lines[150] = b",".join(cells)
    path.write_bytes(b"\n".join(lines))
    calls = []
    real = pacsv.read_csv

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    with (
        mock.patch.object(csvio, "_PLAIN_SEGMENT_BYTES", 100_000),
        mock.patch.object(pacsv, "read_csv", side_effect=counted),
    ):
        table = read_competition_csv(path)
    assert len(calls) == 1
    np.testing.assert_array_equal(table.ids, ids)
    np.testing.assert_array_equal(table.images, _sample.images[:200])


def test_without_the_extension_pyarrow_reads_everything(tmp_path):
    path, ids, labels = _csv(tmp_path, 50, labelled=True)
    with mock.patch.object(plaincsv, "plain_parser", return_value=None):
        table = read_competition_csv(path)
    np.testing.assert_array_equal(table.ids, ids)
    np.testing.assert_array_equal(table.labels, labels)
    np.testing.assert_array_equal(table.images, _sample.images[:50])


def test_a_buffer_too_small_for_the_rows_is_refused_not_overrun(compiled, tmp_path):
    """The C loop stops at the smallest buffer's capacity: more rows than that is a refusal (-1), never a
    write past the end."""
    from fashiondist.data import _plainrows

    path, _, _ = _csv(tmp_path, 3, labelled=True)
    body = path.read_bytes().split(b"\n", 1)[1]
    ids, labels = np.zeros(3, np.int64), np.zeros(3, np.int64)
    assert _plainrows.parse_rows(body, True, ids, labels, np.zeros((3, 784), np.uint8)) == 3
    for short in (
        {"ids": np.zeros(2, np.int64)},
        {"labels": np.zeros(2, np.int64)},
        {"pixels": np.zeros((2, 784), np.uint8)},
    ):
        buffers = {"ids": ids, "labels": labels, "pixels": np.zeros((3, 784), np.uint8)} | short
        assert _plainrows.parse_rows(body, True, buffers["ids"], buffers["labels"], buffers["pixels"]) == -1
    with pytest.raises(TypeError, match="ids: items of 4 bytes"):
        _plainrows.parse_rows(body, True, ids.astype(np.int32), labels, np.zeros((3, 784), np.uint8))
    with pytest.raises(BufferError):  # a read-only output
        _plainrows.parse_rows(body, True, ids, labels, bytes(3 * 784))


@pytest.mark.shared_data
def test_the_real_training_set_as_a_csv_reads_through_the_compiled_parser(shared_data, tmp_path):
    """All 60,000 labelled Fashion-MNIST images as a train.csv (~130 MB): every segment read by the compiled
    parser (pyarrow made to fail), identical to the IDX files."""
    _compiled()
    train = load_data(str(shared_data))
    path = tmp_path / "train.csv"
    write_competition_csv(path, np.arange(1, len(train.images) + 1), train.images, train.labels)
    with mock.patch.object(pacsv, "read_csv", side_effect=AssertionError("pyarrow was used")):
        table = read_competition_csv(path)
    np.testing.assert_array_equal(table.images, train.images)
    np.testing.assert_array_equal(table.labels, train.labels)
    np.testing.assert_array_equal(table.ids, np.arange(1, len(train.images) + 1))
