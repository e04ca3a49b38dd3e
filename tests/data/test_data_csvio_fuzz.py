"""Fuzzing the competition-CSV reader with hypothesis: every input parses or raises the one input error.

Files are real rows of the bundled sample, then broken the ways files break: line ends of every kind mixed
(`\\n`, `\\r\\n`, old-Mac `\\r`, none), quoted and padded cells, cells replaced by arbitrary text, rows cut
short, Ids repeated, cells longer than the csv module's field limit, arbitrary bytes spliced in anywhere,
gzip (whole or cut off), and segment sizes that cut rows mid-way. A file either reads, and then reads the
same whole or in chunks, or raises InputError (the CLI's exit 2); nothing else may escape. A file changed
only in ways a CSV permits (line ends, quotes, padding, leading zeros) must read back the exact pixels.

Deterministic (derandomize) so CI is stable; example counts are fixed below, with no per-example deadline
(a shared CI core can be slow), and the whole module runs well under a minute on two cores.
"""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fashiondist.data import csvio
from fashiondist.data.csvio import iter_csv_chunks, read_competition_csv
from fashiondist.data.sources import load_data
from fashiondist.errors import InputError

ROWS = 4  # real rows per generated file at most: enough for duplicates, chunk edges and line numbers
FUZZ_EXAMPLES = 2000
CLEAN_EXAMPLES = 200
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

_sample = load_data("sample")
IMAGES = _sample.images[:ROWS]  # uint8 [ROWS, 28, 28]
LABELS = _sample.labels[:ROWS]
IDS = 100 + 3 * np.arange(ROWS)
HEADERS = {
    True: ["Id", "Label", *map(str, range(1, 785))],  # a train file: pixels named 1..784
    False: ["Id", *map(str, range(784))],  # a test file: 0..783
}

LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r"])
# cell text that trips CSV parsers: separators, quotes, line ends, NUL, signs, spaces, non-ASCII digits
NASTY = st.text(alphabet=st.sampled_from(list('0123456789,"\r\n\t \x00-+.xeE٣ÿ')), max_size=12)
LONG_FIELD = st.sampled_from([131_072, 131_073, 200_000])  # at and over the csv module's field limit


def _cells(row: int, labelled: bool) -> list[str]:
    label = [str(LABELS[row])] if labelled else []
    return [str(IDS[row]), *label, *map(str, IMAGES[row].ravel())]


@st.composite
def clean_spelling(draw, cell: str) -> str:
    """`cell` written another way a CSV reader must accept: quoted, padded, with leading zeros."""
    if draw(st.booleans()):
        cell = "0" * draw(st.integers(1, 3)) + cell
    if draw(st.booleans()):
        cell = " " * draw(st.integers(0, 2)) + cell + "\t" * draw(st.integers(0, 2))
    if draw(st.booleans()):
        cell = f'"{cell}"'
    return cell


@st.composite
def broken_row(draw, cells: list[str], ids: list[str]) -> list[str]:
    """`cells` with one of the breakages a real file shows, or untouched."""
    cells = cells.copy()
    kind = draw(st.sampled_from(["none", "respell", "nasty", "cut", "extra", "duplicate", "long", "empty"]))
    at = draw(st.integers(0, len(cells) - 1))
    if kind == "respell":
        cells[at] = draw(clean_spelling(cells[at]))
    elif kind == "nasty":
        cells[at] = draw(NASTY)
    elif kind == "cut":
        cells = cells[:at]
    elif kind == "extra":
        cells.append(draw(NASTY))
    elif kind == "duplicate":
        cells[0] = draw(st.sampled_from(ids))
    elif kind == "long":
        cells[at] = ('"' if draw(st.booleans()) else "") + draw(st.sampled_from("7A")) * draw(LONG_FIELD)
    elif kind == "empty":
        cells = []
    return cells


@st.composite
def fuzzed_file(draw) -> tuple[bytes, int]:
    """(file bytes, segment size to read them with)."""
    labelled = draw(st.booleans())
    lines = [HEADERS[labelled]]
    if draw(st.integers(0, 9)) == 0:  # now and then a broken header too
        lines[0] = draw(broken_row(lines[0], ["Id", "Label"]))
    rows = draw(st.integers(0, ROWS))
    ids = [str(i) for i in IDS[:rows]] or ["1"]
    lines += [draw(broken_row(_cells(row, labelled), ids)) for row in range(rows)]
    text = "".join(",".join(cells) + draw(LINE_ENDS) for cells in lines)
    if draw(st.booleans()):
        text = text.rstrip("\r\n")  # no final line end
    data = text.encode()
    for _ in range(draw(st.integers(0, 2))):  # arbitrary bytes spliced in anywhere
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if draw(st.integers(0, 7)) == 0:
        data = gzip.compress(data, mtime=0)
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data) - 1))]  # a download cut off
    return data, draw(st.sampled_from([700, 3000, csvio._SEGMENT_BYTES]))


@contextmanager
def _written(data: bytes, segment_bytes: int) -> Iterator[Path]:
    with (
        tempfile.TemporaryDirectory() as directory,
        mock.patch.object(csvio, "_SEGMENT_BYTES", segment_bytes),
    ):
        path = Path(directory) / "fuzz.csv"
        path.write_bytes(data)
        yield path


@FUZZ
@given(fuzzed_file())
def test_any_file_parses_or_raises_the_input_error(case: tuple[bytes, int]):
    data, segment_bytes = case
    with _written(data, segment_bytes) as path:
        try:
            table = read_competition_csv(path)
        except InputError as err:  # the CLI's exit 2; any other exception fails the test
            line = getattr(err, "line", None)  # a CsvError's line must be one the file has (or the next)
            if line is not None and data[:2] != b"\x1f\x8b":
                lines = len(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"))
                assert 1 <= line <= lines + 1, (str(err), lines)
            return
        assert len(table) >= 1  # never a silent empty read
        chunks = list(iter_csv_chunks(path, chunk_rows=2))
        np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), table.images)
        np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), table.ids)


@st.composite
def clean_file(draw) -> tuple[bytes, int, bool, int]:
    """(file bytes, segment size, labelled, rows): real rows changed only in ways a CSV permits."""
    labelled, rows = draw(st.booleans()), draw(st.integers(1, ROWS))
    lines = [HEADERS[labelled]]
    for row in range(rows):
        cells = _cells(row, labelled)
        for at in draw(st.lists(st.integers(0, len(cells) - 1), max_size=5, unique=True)):
            cells[at] = draw(clean_spelling(cells[at]))
        lines.append(cells)
    text = "".join(",".join(cells) + draw(LINE_ENDS) for cells in lines)
    data = (text.rstrip("\r\n") if draw(st.booleans()) else text).encode()
    if draw(st.booleans()):
        data = gzip.compress(data, mtime=0)
    return data, draw(st.sampled_from([700, 3000, csvio._SEGMENT_BYTES])), labelled, rows


@settings(FUZZ, max_examples=CLEAN_EXAMPLES)
@given(clean_file())
def test_a_file_written_any_valid_way_reads_the_exact_pixels(case: tuple[bytes, int, bool, int]):
    data, segment_bytes, labelled, rows = case
    with _written(data, segment_bytes) as path:
        table = read_competition_csv(path)
    np.testing.assert_array_equal(table.images, IMAGES[:rows])
    np.testing.assert_array_equal(table.ids, IDS[:rows])
    if labelled:
        np.testing.assert_array_equal(table.labels, LABELS[:rows])
    else:
        assert table.labels is None


# --- the two readers agree on what a number is ----------------------------------------------------------
# pyarrow's converter (the fast path) and the exact line-by-line re-read must accept the same cells and read
# the same values: decimal integers only. Cells are respelled with what one of them might take and the other
# not: hex, signs, exponents, underscores, non-ASCII digits, padding, quotes.
NUMBERISH = st.one_of(
    st.text(alphabet=st.sampled_from(list('0123456789xXabfAF+-_ ."\te٣')), min_size=1, max_size=6),
    st.sampled_from(["0x10", "0X1f", "-0", "+5", "1e2", "0b1", "0o7", "1_0", " 7 ", '"0x1"', "-0x1", "00"]),
)


@st.composite
def numeric_file(draw) -> tuple[bytes, bool]:
    labelled, rows = draw(st.booleans()), draw(st.integers(1, ROWS))
    lines = [HEADERS[labelled]]
    for row in range(rows):
        cells = _cells(row, labelled)
        for at in draw(st.lists(st.sampled_from([0, 1, 2, 400, len(cells) - 1]), max_size=3, unique=True)):
            cells[at] = draw(NUMBERISH)
        lines.append(cells)
    return "".join(",".join(cells) + "\n" for cells in lines).encode(), labelled


def _exact_verdict(path: Path) -> tuple[int | None, np.ndarray | None, np.ndarray | None]:
    """(first bad line, ids, pixels) as the exact re-read sees the file: every row checked cell by cell, then
    Ids for duplicates; the values of a valid file parsed by Python from the cells the re-read accepted."""
    import csv

    layout = csvio._layout(path, None, None)
    rows = path.read_text().splitlines()[1:]
    ids, pixels, seen = [], [], set()
    for line, row in enumerate(rows, start=2):
        if csvio._row_problem(layout, line, row) is not None:
            return line, None, None
        cells = next(csv.reader([row]))
        row_id = int(cells[0].strip())
        if row_id in seen:
            return line, None, None
        seen.add(row_id)
        ids.append(row_id)
        pixels.append([int(c.strip()) for c in cells[layout.first_pixel :]])
    return None, np.array(ids), np.array(pixels, dtype=np.uint8).reshape(-1, 28, 28)


@settings(FUZZ, max_examples=CLEAN_EXAMPLES * 2)
@given(numeric_file(), st.sampled_from([700, csvio._SEGMENT_BYTES]))
def test_the_fast_path_and_the_exact_re_read_agree_on_numbers(case: tuple[bytes, bool], segment_bytes: int):
    data, _ = case
    with _written(data, segment_bytes) as path:
        bad_line, ids, images = _exact_verdict(path)
        try:
            table = read_competition_csv(path)
        except InputError as err:
            assert bad_line is not None and getattr(err, "line", None) == bad_line, (str(err), bad_line)
            return
        assert bad_line is None, f"the fast path read what the exact re-read refuses on line {bad_line}"
        np.testing.assert_array_equal(table.ids, ids)
        np.testing.assert_array_equal(table.images, images)
