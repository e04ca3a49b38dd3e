"""Competition CSVs: `Id, Label, <784 pixels>` (train) and `Id, <784 pixels>` (test), read and written.

Pixels are read by position, never by name: the competition's train file named them 1..784 and its test
file 0..783. We write the same names, so a round trip through our own files proves the reader ignores them.

Reading has three speeds. The file is read a segment of whole lines at a time. A segment of plain rows
(digits and commas only, the common case) goes to a loop in C (data/plaincsv.py: 100,000 rows in ~0.3 s
on one core); any other segment to pyarrow's C++ CSV reader with strict column types
(Id and Label int64, pixels uint8: an empty, NaN, fractional or out-of-range pixel fails the conversion;
3.4 s for the same rows on one core). Both give the same arrays for a plain segment; the segments' tables
are re-cut into chunks of rows. Only when pyarrow refuses a segment do we re-read from the current chunk
line by line in Python, to name the exact line and column its message lacks. Duplicate Ids and labels
outside 0..K-1 are checked on the parsed arrays, across chunks.

Line numbers are what an editor shows: the header is line 1, the first data row line 2. pyarrow is told not
to skip empty lines, so data row i is always line i + 2. A line ends at `\\n`, `\\r\\n` or a lone `\\r` (old Mac
files), alike for the header, the segments and the line-by-line re-read, so all three count the same lines.
Numbers are decimal integers only, in both readers: pyarrow's converter also takes hex (`0x10` as 16, which
would rewrite a submission's Id), so a segment holding an `x` goes to the exact re-read, which refuses it;
a pixel has no sign (pyarrow's uint8 refuses `-0`, and so does the re-read).

A pipe (`/dev/stdin`, a FIFO, bash's `<(cat x.csv)`) is read once, into a temporary copy that every later
read of the same path uses: the header, the gzip sniff and the rows each open the file, and a pipe's bytes
can be read only once.
This module is torch-free (the inference stage uses it).
"""

from __future__ import annotations

import atexit
import csv
import gzip
import io
import os
import re
import shutil
import stat
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fashiondist.atomic_io import atomic_write
from fashiondist.constants import (
    ID_COLUMN,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    LABEL_COLUMN,
    NUM_PIXELS,
    PIXEL_MAX,
)
from fashiondist.data import plaincsv
from fashiondist.errors import CsvError, InputError

if TYPE_CHECKING:
    import pyarrow as pa

TRAIN_COLUMNS = 2 + NUM_PIXELS  # Id, Label, 784 pixels
TEST_COLUMNS = 1 + NUM_PIXELS  # Id, 784 pixels
DEFAULT_CHUNK_ROWS = 8192  # ~6.4 MB of pixels per chunk: bounded memory, still few Python round trips
# The file is parsed a segment at a time (bounded memory), each segment by pyarrow's multi-threaded reader in
# blocks. A whole-buffer `read_csv` per segment beats pyarrow's streaming reader: a 10,000-row testX.csv
# (22 MB) parsed in 0.144 s vs 0.20-0.23 s (2 cores; 16 MB segments of 4 MB blocks measured best of 4-32 MB
# segments x 1-4 MB blocks). A row is at most ~3 KB, so a block holds >1000 rows.
_SEGMENT_BYTES = 16 << 20
# The compiled parser's segments: 4 MB (~1,900 rows) cut the peak memory of `infer` on 100,000 rows from 386 to
# 307 MB against 16 MB segments, at the same speed (a call per segment costs nothing next to its parse).
_PLAIN_SEGMENT_BYTES = 4 << 20
_BLOCK_BYTES = 4 << 20
_INT = re.compile(r"[ \t]*-?[0-9]+[ \t]*")  # the integer syntax pyarrow's int64 / uint8 conversion accepts
_PIXEL = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0..255 written plainly (no sign, space or leading zero)
_PLAIN_PIXELS = re.compile(rf"{_PIXEL}(?:,{_PIXEL}){{{NUM_PIXELS - 1}}}")  # the 784 pixel cells of a row
_INT64_MAX = np.iinfo(np.int64).max
_INT64_DIGITS = len(str(_INT64_MAX))  # 19: a cell with more significant digits is out of range, unparsed
_SHOWN_CHARS = 40  # longer cells and header names are cut short in messages: an error stays one short line


@dataclass(frozen=True)
class CsvTable:
    """Rows of a competition CSV, in file order: row i of a whole file is on line i + 2 (empty lines are
    errors, so rows and lines never drift apart)."""

    ids: np.ndarray  # int64 [N]
    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray | None  # int64 [N]; None for a test file (no Label column)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class _Layout:
    """What the header says: where the columns are, and what each row must hold."""

    path: Path  # as the user named it, for messages
    names: tuple[str, ...]  # header names as written (long ones cut short), for error messages
    labelled: bool
    num_classes: int | None
    gzipped: bool
    source: Path  # where the bytes are read: `path`, or the copy of a pipe (_readable)

    @property
    def first_pixel(self) -> int:
        return 2 if self.labelled else 1

    @property
    def top_label(self) -> int | None:
        return self.num_classes - 1 if self.num_classes is not None else None

    def open_bytes(self) -> io.BufferedIOBase:
        """The file's bytes, gunzipped by content (not by the `.gz` extension)."""
        return gzip.open(self.source, "rb") if self.gzipped else self.source.open("rb")  # type: ignore[return-value]


_PIPE_COPIES: dict[str, Path] = {}  # a pipe's path as given -> the temporary copy of its bytes


def _readable(path: Path) -> Path:
    """`path` itself when it is a regular file (or missing, or a directory: the reader says so); for a pipe or
    other stream, a temporary copy of its bytes, made on the first read and reused by every later one."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return path
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return path
    copy = _PIPE_COPIES.get(str(path))
    if copy is None:
        if not _PIPE_COPIES:
            atexit.register(_remove_pipe_copies)
        handle, name = tempfile.mkstemp(prefix="fashiondist-pipe-", suffix=".csv")
        copy = _PIPE_COPIES[str(path)] = Path(name)
        with os.fdopen(handle, "wb") as out, path.open("rb") as stream:
            shutil.copyfileobj(stream, out, 1 << 20)
    return copy


def _remove_pipe_copies() -> None:
    for copy in _PIPE_COPIES.values():
        copy.unlink(missing_ok=True)
    _PIPE_COPIES.clear()


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open_text(path: Path, gzipped: bool) -> io.TextIOBase:
    """The file as text; newline="" keeps line endings for csv, errors="replace" lets bad bytes be reported."""
    opener = gzip.open if gzipped else open
    return opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="")  # type: ignore[return-value]


def _read_head(path: Path, source: Path) -> tuple[list[str] | None, bool, bool]:
    """The header's cells (None for an empty file), whether any line follows it, and whether it is gzip.
    `source` holds `path`'s bytes (a pipe's copy)."""
    try:
        gzipped = _is_gzip(source)
        with _open_text(source, gzipped) as f:
            first, second = f.readline(), f.readline()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a CSV file") from None
    except (OSError, EOFError, zlib.error) as err:  # a damaged .gz
        raise CsvError(path, None, None, f"cannot be read ({err})") from None
    if not first:
        return None, False, gzipped
    return _split_quoted(path, 1, first), bool(second), gzipped


def _split_quoted(path: Path, line: int, text: str) -> list[str]:
    """The cells of one line with CSV quoting; the csv module's own refusals (a cell longer than its field
    limit of 131,072 characters) become a CsvError naming the line."""
    try:
        return next(csv.reader([text]))
    except csv.Error as err:
        raise CsvError(path, line, None, f"cannot be split into cells: {err}") from None


def _layout(path: str | Path, labelled: bool | None, num_classes: int | None) -> _Layout:
    """Read and check the header: `Id` first, then `Label` for a train file, then exactly 784 pixel columns."""
    path = Path(path)
    try:
        source = _readable(path)
    except OSError as err:
        raise CsvError(path, None, None, f"cannot be read ({err.strerror or err})") from None
    names, has_rows, gzipped = _read_head(path, source)
    if names is None:
        raise CsvError(
            path, 1, None, "the file is empty; expected a header `Id,Label,<784 pixels>` or `Id,<784 pixels>`"
        )
    if not names:  # a first line with nothing on it
        raise CsvError(
            path, 1, None, "the first line is empty; a competition CSV starts with a header `Id,...`"
        )
    if names[0].strip().lower() != ID_COLUMN.lower():
        if _INT.fullmatch(names[0]):
            raise CsvError(
                path, 1, None, "the first line is data; a competition CSV starts with a header `Id,...`"
            )
        raise CsvError(path, 1, _shorten(names[0]), f"the first column must be {ID_COLUMN!r}")
    has_label = len(names) > 1 and names[1].strip().lower() == LABEL_COLUMN.lower()
    if labelled is not None and labelled != has_label:
        want = (
            "a train file (Id, Label, 784 pixels)" if labelled else "a test file (Id, 784 pixels), no Label"
        )
        raise CsvError(path, 1, _shorten(names[1]) if len(names) > 1 else None, f"expected {want}")
    expected = TRAIN_COLUMNS if has_label else TEST_COLUMNS
    if len(names) != expected:
        shape = "Id, Label, 784 pixels" if has_label else "Id, 784 pixels"
        raise CsvError(path, 1, None, f"the header has {len(names)} columns, expected {expected} ({shape})")
    if not has_rows:
        raise CsvError(path, 2, None, "no data rows after the header")
    return _Layout(path, tuple(map(_shorten, names)), has_label, num_classes, gzipped, source)


def csv_is_labelled(path: str | Path) -> bool:
    """Whether a competition CSV has a Label column (a train file), from its checked header alone."""
    return _layout(path, None, None).labelled


# --- fast paths: the compiled plain-row parser, else pyarrow -----------------------------------------------


def _arrow():
    """(pyarrow, pyarrow.csv), imported at first use: a file whose every segment the C loop reads never needs
    them (~40 ms of every `infer` start)."""
    import pyarrow
    import pyarrow.csv

    return pyarrow, pyarrow.csv


def _arrow_options(layout: _Layout) -> dict:
    pa, pacsv = _arrow()
    names = [f"c{i}" for i in range(len(layout.names))]  # by position: header names may repeat or differ
    types = {name: pa.uint8() for name in names[layout.first_pixel :]}
    types[names[0]] = pa.int64()
    if layout.labelled:
        types[names[1]] = pa.int64()
    return {
        # the segments hold no header line
        "read_options": pacsv.ReadOptions(column_names=names, block_size=_BLOCK_BYTES),
        # every physical line is a row, so row i is line i + 2 and errors can be placed exactly
        "parse_options": pacsv.ParseOptions(ignore_empty_lines=False),
        # no null markers: an empty or "NaN" cell is a conversion error, not a silent null
        "convert_options": pacsv.ConvertOptions(
            column_types=types, null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False
        ),
    }


def _column_array(column: pa.ChunkedArray, dtype: type[np.generic]) -> np.ndarray:
    """A null-free fixed-width column as a numpy view of its data buffer.

    pyarrow's own `to_numpy()` imports pandas (~0.2 s of every `infer` start); the parse options forbid
    nulls, so the data buffer alone is the column.
    """
    array = column.combine_chunks()
    width = np.dtype(dtype).itemsize
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * width)


def _to_csv_table(table: pa.Table, layout: _Layout) -> CsvTable:
    first = layout.first_pixel
    pixels = np.empty((table.num_rows, NUM_PIXELS), dtype=np.uint8)  # [N, 784]
    for j in range(NUM_PIXELS):
        pixels[:, j] = _column_array(table.column(first + j), np.uint8)
    # copies: plain writable numpy arrays, not read-only views into pyarrow's buffers
    return CsvTable(
        ids=_column_array(table.column(0), np.int64).copy(),
        images=pixels.reshape(-1, IMAGE_HEIGHT, IMAGE_WIDTH),  # [N, 784] -> [N, 28, 28], row-major
        labels=_column_array(table.column(1), np.int64).copy() if layout.labelled else None,
    )


# --- slow path: find the exact line and column -----------------------------------------------------------


def _shorten(text: str) -> str:
    """`text`, cut to _SHOWN_CHARS with its length said when longer (a 200,000-character cell)."""
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text):,} characters)"


def _int_value(text: str) -> tuple[int, str]:
    """(value, as shown) of a cell that matches _INT. A value with more digits than an int64 holds is clamped
    to just outside the int64 range (Python refuses int() of a string over 4,300 digits), shown as written."""
    text = text.strip()
    digits = text.lstrip("-").lstrip("0")
    if len(digits) > _INT64_DIGITS:
        return (-1 if text.startswith("-") else 1) * (_INT64_MAX + 1), _shorten(text)
    value = int(text)
    return value, str(value)


def _cell_problem(text: str, what: str, high: int | None, unsigned: bool = False) -> str | None:
    """Why a cell is not an integer in 0..high (0..int64 max when high is None), or None when it is.
    `unsigned`: no sign at all, as pyarrow's uint8 conversion reads a pixel (`-0` refused)."""
    if not text.strip():
        return f"empty {what}"
    if not _INT.fullmatch(text):
        return f"{what} {_shorten(text.strip())!r} is not an integer"
    value, shown = _int_value(text)
    if value < 0 or (unsigned and text.strip().startswith("-")):
        return f"{what} {shown if value < 0 else _shorten(text.strip())} is negative"
    if high is not None and value > high:
        return f"{what} {shown} is outside 0..{high}"
    if value > _INT64_MAX:
        return f"{what} {shown} does not fit in 64 bits"
    return None


def _id_problem(text: str) -> str | None:
    if not text.strip():
        return "missing Id (empty cell)"
    if not _INT.fullmatch(text):
        return f"Id {_shorten(text.strip())!r} is not an integer"
    value, shown = _int_value(text)
    if abs(value) > _INT64_MAX:
        return f"Id {shown} does not fit in 64 bits"
    return None


def _key_problem(layout: _Layout, cells: list[str]) -> tuple[str, str] | None:
    """(column, problem) for a bad Id or Label cell (the first one or two cells of a row)."""
    problem = _id_problem(cells[0])
    if problem:
        return layout.names[0], problem
    if layout.labelled:
        problem = _cell_problem(cells[1], "label", layout.top_label)
        if problem:
            return layout.names[1], problem
    return None


def _cells_problem(layout: _Layout, cells: list[str]) -> tuple[str | None, str] | None:
    """(column, problem) for the first bad cell of a row split into cells, or None when the row is valid."""
    names = layout.names
    if len(cells) != len(names):
        if cells == [""]:
            return None, f"empty line; expected {len(names)} columns"
        if len(cells) < len(names):
            return names[len(cells)], f"the row ends after {len(cells)} of {len(names)} columns (truncated?)"
        return None, f"the row has {len(cells)} values, the header {len(names)} columns"
    key = _key_problem(layout, cells)
    if key:
        return key
    for index in range(layout.first_pixel, len(cells)):
        problem = _cell_problem(cells[index], "pixel value", PIXEL_MAX, unsigned=True)
        if problem:
            return names[index], problem
    return None


def _row_problem(layout: _Layout, line: int, row: str) -> tuple[str | None, str] | None:
    """(column, problem) for the first bad cell of `row`, the text of editor line `line`, or None when the
    row is valid.

    One C-level regex match clears the 784 pixels of a plain row (~40 us); only a row it rejects is split
    and checked cell by cell (quotes, spaces, leading zeros, or a real problem).
    """
    head = row.split(",", layout.first_pixel)  # [Id, (Label,) "p0,p1,...,p783"]
    if '"' not in row and len(head) == layout.first_pixel + 1 and _PLAIN_PIXELS.fullmatch(head[-1]):
        return _key_problem(layout, head)
    cells = _split_quoted(layout.path, line, row) if '"' in row else row.split(",")
    return _cells_problem(layout, cells or [""])  # csv gives [] for a line with nothing on it


# --- checks on parsed rows --------------------------------------------------------------------------------


class _IdLedger:
    """Every Id seen so far (with the line it was on), to catch duplicates across chunks, in O(N log N) total.

    The Ids are kept as a few sorted runs whose sizes at least double from one to the next (a log-structured
    merge): a chunk's Ids become a new run, and a run is merged into the one before it while that one is not
    at least twice as long. Every Id is merged O(log N) times, each merge a linear pass (a stable sort of two
    sorted runs is timsort's merge), and a lookup searches O(log N) runs. Inserting each chunk into one
    sorted array (`np.insert`) copied the whole array per chunk: quadratic, 0.33 s at 1M rows, 21x that at 4M.
    Two int64 arrays in all: 16 MB for a million rows, while the pixels never outlive their chunk.
    """

    def __init__(self) -> None:
        # (sorted Ids, editor line of each), longest first
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def _lookup(self, ids: np.ndarray) -> np.ndarray:
        """The line of each of `ids` seen before, or 0 where it is new (int64 [n])."""
        lines = np.zeros(len(ids), dtype=np.int64)
        for run_ids, run_lines in self.runs:
            pos = np.searchsorted(run_ids, ids).clip(max=len(run_ids) - 1)
            hit = run_ids[pos] == ids
            lines[hit] = run_lines[pos[hit]]
        return lines

    def first_duplicate(self, ids: np.ndarray, first_line: int) -> tuple[int, int] | None:
        """(row in `ids`, line of the Id's first occurrence) for the earliest row whose Id came before it."""
        found = []
        earlier = self._lookup(ids)
        hits = np.flatnonzero(earlier)
        if len(hits):
            found.append((int(hits[0]), int(earlier[hits[0]])))
        # rows whose Id an earlier row of the chunk has: equal neighbours in a stable sort, the later one
        order = np.argsort(ids, kind="stable")
        repeats = order[1:][ids[order[1:]] == ids[order[:-1]]]
        if len(repeats):
            row = int(repeats.min())
            found.append((row, first_line + int(np.flatnonzero(ids == ids[row])[0])))
        return min(found) if found else None

    def line_of(self, row_id: int) -> int | None:
        """The line of an Id already seen, or None."""
        line = int(self._lookup(np.array([row_id], dtype=np.int64))[0])
        return line or None  # editor lines start at 2: 0 is never one

    def add(self, ids: np.ndarray, first_line: int) -> None:
        order = np.argsort(ids, kind="stable")
        run = (ids[order], first_line + order)
        while self.runs and len(self.runs[-1][0]) < 2 * len(run[0]):
            last_ids, last_lines = self.runs.pop()
            merged_ids = np.concatenate([last_ids, run[0]])
            merge = np.argsort(merged_ids, kind="stable")  # two sorted runs: one linear merge
            run = (merged_ids[merge], np.concatenate([last_lines, run[1]])[merge])
        self.runs.append(run)


def _check_values(layout: _Layout, chunk: CsvTable, first_line: int, ledger: _IdLedger) -> None:
    """Raise for the earliest duplicate Id or out-of-range label of a parsed chunk starting at `first_line`."""
    problems: list[tuple[int, str, str]] = []  # (row in chunk, column name, problem)
    duplicate = ledger.first_duplicate(chunk.ids, first_line)
    if duplicate:
        row, earlier = duplicate
        problems.append((row, layout.names[0], f"duplicate Id {chunk.ids[row]} (first on line {earlier})"))
    if chunk.labels is not None:
        top = layout.top_label
        bad = np.flatnonzero((chunk.labels < 0) | (chunk.labels > (top if top is not None else _INT64_MAX)))
        if len(bad):
            row = int(bad[0])
            problems.append((row, layout.names[1], _cell_problem(str(chunk.labels[row]), "label", top) or ""))
    if problems:
        row, column, problem = min(problems)
        raise CsvError(layout.path, first_line + row, column, problem)
    ledger.add(chunk.ids, first_line)


def _locate(layout: _Layout, start_line: int, ledger: _IdLedger, arrow_error: Exception) -> CsvError:
    """The CsvError for the first bad row at or after `start_line`, found by re-reading line by line.

    Checks everything the fast path does, duplicate Ids included (against `ledger`, the Ids of the rows
    before `start_line`), so the error always names the first bad line of the file.
    """
    line_no = start_line - 1
    seen: dict[int, int] = {}  # Id -> line, for the rows scanned here
    try:
        with _open_text(layout.source, layout.gzipped) as f:
            for line_no, text in enumerate(f, start=1):
                if line_no < start_line:
                    continue
                row = text.rstrip("\r\n")
                found = _row_problem(layout, line_no, row)
                if found is None:  # a valid row: its Id cell is an integer, perhaps quoted
                    id_cell = (
                        _split_quoted(layout.path, line_no, row)[0] if '"' in row else row.split(",", 1)[0]
                    )
                    row_id = _int_value(id_cell)[0]
                    found = _duplicate_problem(layout, row_id, line_no, seen, ledger)
                if found:
                    return CsvError(layout.path, line_no, found[0], found[1])
    except CsvError as err:  # a line the csv module cannot split
        return err
    except (OSError, EOFError, zlib.error) as err:  # a .gz damaged after its first lines
        return CsvError(layout.path, line_no + 1, None, f"cannot be read ({err})")
    detail = " ".join(str(arrow_error).split())  # one line, as the CLI prints it
    return CsvError(layout.path, None, None, f"cannot be parsed as a competition CSV ({detail})")


def _duplicate_problem(
    layout: _Layout, row_id: int, line_no: int, seen: dict[int, int], ledger: _IdLedger
) -> tuple[str, str] | None:
    earlier = seen.get(row_id, ledger.line_of(row_id))
    if earlier is not None:
        return layout.names[0], f"duplicate Id {row_id} (first on line {earlier})"
    seen[row_id] = line_no
    return None


# --- public API -------------------------------------------------------------------------------------------


def read_competition_csv(
    path: str | Path, labelled: bool | None = None, num_classes: int | None = None
) -> CsvTable:
    """All rows of a competition CSV (`.csv` or `.csv.gz`), validated.

    labelled: True for a train file, False for a test file, None to take it from the header (a `Label`
    second column). num_classes: when given, labels must lie in 0..num_classes-1.
    Raises CsvError (file, editor line, column) for the first problem in the file.
    """
    return _concatenate(list(iter_csv_chunks(path, labelled=labelled, num_classes=num_classes)))  # >= 1 chunk


def iter_csv_chunks(
    path: str | Path,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    labelled: bool | None = None,
    num_classes: int | None = None,
    first_chunk_rows: int | None = None,
) -> Iterator[CsvTable]:
    """The rows of a competition CSV in chunks of `chunk_rows` (the last may be shorter), in bounded memory.

    `first_chunk_rows`: the first chunk's size, when a consumer should start sooner (`infer`: onnxruntime
    begins on the file's first segment instead of waiting for a whole chunk to be read).

    Same validation as read_competition_csv, with absolute line numbers and duplicate Ids caught across
    chunks. A bad row raises when its chunk is reached, after the chunks before it have been yielded, so a
    caller that writes output must write to a temp file and discard it on error.
    """
    if chunk_rows < 1 or (first_chunk_rows is not None and first_chunk_rows < 1):
        raise ValueError(f"chunk sizes must be >= 1, got {chunk_rows} and first {first_chunk_rows}")
    layout = _layout(path, labelled, num_classes)
    ledger = _IdLedger()  # the Ids of every row yielded so far
    line = 2  # editor line of the next row to yield
    tables = _recut(_segment_tables(layout), chunk_rows, first_chunk_rows)
    while True:
        try:
            table = next(tables, None)
        except Exception as err:
            if not _unreadable_segment(err):
                raise
            # pyarrow refused a segment (or the gzip stream broke): search from the first unchecked row
            raise _locate(layout, line, ledger, err) from None
        if table is None:
            break
        _check_values(layout, table, line, ledger)
        yield table
        line += len(table)
    if line == 2:  # the header saw a line after it, the reader none: never report a run over 0 rows
        raise CsvError(layout.path, 2, None, "no data rows after the header")


def _unreadable_segment(err: Exception) -> bool:
    """Whether `err` is pyarrow refusing a segment (ArrowInvalid; pyarrow is loaded once a segment went to it)
    or the gzip stream breaking: then the exact re-read names the first bad line."""
    if isinstance(err, OSError | EOFError | zlib.error):
        return True
    arrow = sys.modules.get("pyarrow")
    return arrow is not None and isinstance(err, arrow.ArrowInvalid)


def _first_line_end(data: bytes, final: bool) -> int | None:
    """The index just past the first line end of `data` (`\\n`, `\\r\\n` or `\\r`), or None when there is none
    yet: a `\\r` as the last byte may be the first half of a `\\r\\n` that the next block completes, unless
    `data` is `final` (the rest of the file)."""
    ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
    if not ends:
        return None
    end = min(ends)
    if data[end : end + 1] == b"\r":
        if end + 1 == len(data) and not final:
            return None
        if data[end + 1 : end + 2] == b"\n":
            return end + 2
    return end + 1


def _last_line_end(data: bytes, start: int) -> int:
    """The index just past the last whole line end at or after `start`, or 0 for none; a `\\r` as the last
    byte is not yet one (the next block may start with its `\\n`)."""
    return max(data.rfind(b"\n", start), data.rfind(b"\r", start, len(data) - 1)) + 1


def _segments(layout: _Layout, segment_bytes: int) -> Iterator[tuple[bytes, int, int]]:
    """The data rows (header skipped) as (data, start, end): data[start:end] holds about `segment_bytes` of
    whole lines, cut after a line end (the caller takes a memoryview of it: no copy).

    Line ends are `\\n`, `\\r\\n` or `\\r`, as for the header (text-mode readline) and pyarrow; a cut never
    splits a `\\r\\n`. The last segment ends where the file does, with or without a final line end; a
    segment holds at least one whole line, however long.
    """
    with layout.open_bytes() as f:
        pending = b""  # read, not yet yielded
        start = None  # where the rows begin in `pending`: None until the header's line end is seen
        while block := f.read(segment_bytes):
            data = pending + block if pending else block
            if start is None:
                start = _first_line_end(data, final=False)  # the header, checked by _layout
                if start is None:
                    pending = data
                    continue
            cut = _last_line_end(data, start)
            if cut > start:
                yield data, start, cut
                pending, start = data[cut:], 0
            else:
                pending = data
        if start is None:
            start = _first_line_end(pending, final=True) or len(pending)
        if len(pending) > start:
            yield pending, start, len(pending)


def _refuse_hex(data: bytes, start: int, end: int) -> None:
    """pyarrow's ArrowInvalid when data[start:end] holds an `x` or `X`: pyarrow would read `0x10` as 16, while a
    cell of a competition CSV is a decimal integer. The exact re-read then names the cell (two memchr scans:
    ~5 ms for a 16 MB segment, against ~0.25 s for pyarrow to parse it; the C loop refuses an `x` itself)."""
    if data.find(b"x", start, end) >= 0 or data.find(b"X", start, end) >= 0:
        raise _arrow()[0].ArrowInvalid("a cell holds an x: not a decimal integer")


def _segment_tables(layout: _Layout) -> Iterator[CsvTable]:
    """The file's rows, one CsvTable per segment: a segment of plain rows by the compiled parser
    (data/plaincsv.py) where it was built, any other segment by pyarrow (which raises pa.ArrowInvalid for a
    bad one)."""
    parse_plain = plaincsv.plain_parser()
    options = None  # pyarrow's, made (and pyarrow imported) when a segment first needs them
    for data, start, end in _segments(
        layout, _PLAIN_SEGMENT_BYTES if parse_plain is not None else _SEGMENT_BYTES
    ):
        segment = memoryview(data)[start:end]
        plain = parse_plain(segment, layout.labelled) if parse_plain is not None else None
        if plain is not None:
            ids, labels, pixels = plain
            yield CsvTable(ids, pixels.reshape(-1, IMAGE_HEIGHT, IMAGE_WIDTH), labels)
            continue
        _refuse_hex(data, start, end)
        pa, pacsv = _arrow()
        options = options or _arrow_options(layout)
        yield _to_csv_table(pacsv.read_csv(pa.BufferReader(segment), **options), layout)


def _recut(tables: Iterator[CsvTable], chunk_rows: int, first_rows: int | None = None) -> Iterator[CsvTable]:
    """`tables` re-cut into tables of exactly `chunk_rows` rows (the first `first_rows` when given, the last may
    be shorter), in file order.

    A chunk inside one table is a view of it; a chunk across two is one concatenation of their rows.
    """
    pending: list[CsvTable] = []
    pending_rows = 0
    size = first_rows or chunk_rows
    for table in tables:
        pending.append(table)
        pending_rows += len(table)
        while pending_rows >= size:
            whole = pending[0] if len(pending) == 1 else _concatenate(pending)
            yield _rows(whole, slice(0, size))
            pending = [_rows(whole, slice(size, None))] if pending_rows > size else []
            pending_rows -= size
            size = chunk_rows
    if pending_rows:
        yield pending[0] if len(pending) == 1 else _concatenate(pending)


def _rows(table: CsvTable, rows: slice) -> CsvTable:
    labels = table.labels[rows] if table.labels is not None else None
    return CsvTable(table.ids[rows], table.images[rows], labels)


def _concatenate(tables: list[CsvTable]) -> CsvTable:
    labels = np.concatenate([t.labels for t in tables]) if tables[0].labels is not None else None  # type: ignore[misc]
    return CsvTable(
        np.concatenate([t.ids for t in tables]), np.concatenate([t.images for t in tables]), labels
    )


def _column_names(labelled: bool) -> list[str]:
    """The competition's own header: pixels named 1..784 in a train file, 0..783 in a test file."""
    if labelled:
        return [ID_COLUMN, LABEL_COLUMN, *map(str, range(1, NUM_PIXELS + 1))]
    return [ID_COLUMN, *map(str, range(NUM_PIXELS))]


def write_competition_csv(
    path: str | Path, ids: np.ndarray, images: np.ndarray, labels: np.ndarray | None = None
) -> None:
    """Write a competition CSV atomically: train-shaped with labels, test-shaped without.

    ids int [N], images uint8 [N, 28, 28], labels int [N] or None. A `.gz` path is gzip-compressed.
    """
    n = len(ids)
    if images.dtype != np.uint8 or images.shape != (n, IMAGE_HEIGHT, IMAGE_WIDTH):
        raise ValueError(f"images must be uint8 [{n}, 28, 28], got {images.dtype} {list(images.shape)}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} ids")
    names = _column_names(labels is not None)
    pixel_columns = np.ascontiguousarray(images.reshape(n, NUM_PIXELS).T)  # [784, N]: one array per column
    pa, pacsv = _arrow()
    columns = [pa.array(np.asarray(ids, dtype=np.int64))]
    if labels is not None:
        columns.append(pa.array(np.asarray(labels, dtype=np.int64)))
    columns.extend(pa.array(column) for column in pixel_columns)
    table = pa.Table.from_arrays(columns, names=[f"c{i}" for i in range(len(names))])
    with atomic_write(path) as f:
        f.write((",".join(names) + "\n").encode())
        pacsv.write_csv(
            table, f, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none")
        )
