"""Competition CSVs on real images: bit-exact round trips, and one precise error per malformed file.

Every bad file is made by corrupting one line of a real CSV written from the bundled sample; each case runs
through the CLI (`fashiondist data export-csv`) and asserts the exact message, exit code 2, and that the
output directory stays empty.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from fashiondist.cli import main
from fashiondist.data import csvio
from fashiondist.data.csvio import iter_csv_chunks, read_competition_csv, write_competition_csv
from fashiondist.data.sources import load_data
from fashiondist.errors import CsvError

ROWS = 30  # data rows in the small real CSVs below: lines 2..31


@pytest.fixture(scope="module")
def sample():
    return load_data("sample")


@pytest.fixture(scope="module")
def small_csvs(sample, tmp_path_factory) -> dict[str, Path]:
    """A train-shaped and a test-shaped CSV of the sample's first 30 images; Ids 100, 103, 106, ..."""
    root = tmp_path_factory.mktemp("csv")
    ids = 100 + 3 * np.arange(ROWS)
    write_competition_csv(root / "train.csv", ids, sample.images[:ROWS], sample.labels[:ROWS])
    write_competition_csv(root / "testX.csv", ids, sample.images[:ROWS])
    return {"train": root / "train.csv", "test": root / "testX.csv"}


def _set_cell(lines: list[str], line: int, index: int, value: str) -> None:
    """Replace cell `index` (0 = Id) of editor line `line`."""
    cells = lines[line - 1].split(",")
    cells[index] = value
    lines[line - 1] = ",".join(cells)


def _cut_row(lines: list[str], line: int, keep: int) -> None:
    lines[line - 1] = ",".join(lines[line - 1].split(",")[:keep])


# (case, kind, corruption of the lines, expected "line N, column 'X': problem" tail of the message)
# fmt: off
BAD_CSVS = [
    ("nan pixel", "train", lambda L: _set_cell(L, 7, 300, "NaN"), "line 7, column '299': pixel value 'NaN' is not an integer"),
    ("empty pixel", "train", lambda L: _set_cell(L, 9, 785, ""), "line 9, column '784': empty pixel value"),
    ("pixel 256", "test", lambda L: _set_cell(L, 12, 5, "256"), "line 12, column '4': pixel value 256 is outside 0..255"),
    ("negative pixel", "test", lambda L: _set_cell(L, 3, 1, "-3"), "line 3, column '0': pixel value -3 is negative"),
    ("fractional pixel", "train", lambda L: _set_cell(L, 4, 101, "1.5"), "line 4, column '100': pixel value '1.5' is not an integer"),
    ("quoted pixel 300", "test", lambda L: _set_cell(L, 5, 9, '"300"'), "line 5, column '8': pixel value 300 is outside 0..255"),
    ("duplicate Id", "test", lambda L: _set_cell(L, 15, 0, "109"), "line 15, column 'Id': duplicate Id 109 (first on line 5)"),
    ("empty Id", "train", lambda L: _set_cell(L, 6, 0, ""), "line 6, column 'Id': missing Id (empty cell)"),
    ("text Id", "test", lambda L: _set_cell(L, 6, 0, "img6"), "line 6, column 'Id': Id 'img6' is not an integer"),
    ("negative label", "train", lambda L: _set_cell(L, 8, 1, "-1"), "line 8, column 'Label': label -1 is negative"),
    ("text label", "train", lambda L: _set_cell(L, 8, 1, "coat"), "line 8, column 'Label': label 'coat' is not an integer"),
    ("label gap", "train", lambda L: _set_cell(L, 10, 1, "12"), "line 10, column 'Label': label 12 skips class 10"),
    ("short row", "train", lambda L: _cut_row(L, 5, 100), "line 5, column '99': the row ends after 100 of 786 columns"),
    ("long row", "test", lambda L: L.__setitem__(4, L[4] + ",0"), "line 5: the row has 786 values, the header 785 columns"),
    ("truncated last row", "test", lambda L: _cut_row(L, 31, 400), "line 31, column '399': the row ends after 400 of 785 columns"),
    ("empty line", "train", lambda L: L.insert(10, ""), "line 11: empty line; expected 786 columns"),
    ("header short", "train", lambda L: _cut_row(L, 1, 785), "line 1: the header has 785 columns, expected 786"),
    ("header without Id", "test", lambda L: _set_cell(L, 1, 0, "Index"), "line 1, column 'Index': the first column must be 'Id'"),
    ("no header", "test", lambda L: L.pop(0), "line 1: the first line is data"),
    ("header only", "train", lambda L: L.__delitem__(slice(1, None)), "line 2: no data rows after the header"),
    ("empty file", "train", lambda L: L.clear(), "line 1: the file is empty"),
    ("empty first line", "test", lambda L: L.insert(0, ""), "line 1: the first line is empty"),  # was IndexError
    # the first problem in file order wins, even when a later row is the one pyarrow trips over
    ("duplicate before bad cell", "train", lambda L: (_set_cell(L, 15, 0, "103"), _set_cell(L, 20, 9, "x")),
     "line 15, column 'Id': duplicate Id 103 (first on line 3)"),
]
# fmt: on


def _corrupt(source: Path, corrupt, out: Path) -> Path:
    lines = source.read_text().splitlines()
    corrupt(lines)
    out.write_text("".join(line + "\n" for line in lines))
    return out


@pytest.mark.parametrize(
    ("kind", "corrupt", "expected"), [c[1:] for c in BAD_CSVS], ids=[c[0] for c in BAD_CSVS]
)
def test_bad_csv_names_line_and_column_and_writes_nothing(
    small_csvs, tmp_path, capsys, kind, corrupt, expected
):
    bad = _corrupt(small_csvs[kind], corrupt, tmp_path / "bad.csv")
    out = tmp_path / "out"
    split = "train" if kind == "train" else "test"
    assert main(["data", "export-csv", "--data", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fashiondist: error: {bad}, {expected}")
    assert err.count("\n") == 1, "one error line"
    assert not out.exists(), "nothing written"
    # the library raises the same CsvError (label gaps are a data-source check, not a CSV one)
    if "skips class" not in expected:
        with pytest.raises(CsvError, match=expected.split(":")[0]):
            load_data(str(bad), split=split)


def test_label_outside_num_classes(small_csvs, tmp_path):
    bad = _corrupt(small_csvs["train"], lambda L: _set_cell(L, 8, 1, "10"), tmp_path / "bad.csv")
    assert len(read_competition_csv(bad)) == ROWS  # 11 classes are fine when nobody says otherwise
    with pytest.raises(CsvError, match=r"line 8, column 'Label': label 10 is outside 0\.\.9$"):
        read_competition_csv(bad, num_classes=10)
    with pytest.raises(CsvError, match=r"line 8, column 'Label': label 10 is outside 0\.\.9$"):
        list(iter_csv_chunks(bad, chunk_rows=4, num_classes=10))


def test_expected_kind_is_checked(small_csvs):
    with pytest.raises(CsvError, match=r"line 1, column 'Label': expected a test file"):
        read_competition_csv(small_csvs["train"], labelled=False)
    with pytest.raises(CsvError, match=r"line 1, column '0': expected a train file"):
        read_competition_csv(small_csvs["test"], labelled=True)


def test_round_trip_is_bit_exact_and_reads_pixels_by_position(sample, tmp_path):
    """export-csv writes the sample as train.csv (pixels 1..784) and testX.csv (0..783); both read back exactly."""
    assert main(["data", "export-csv", "--data", "sample", "--out", str(tmp_path)]) == 0
    train_header = (tmp_path / "train.csv").read_text().split("\n", 1)[0].split(",")
    test_header = (tmp_path / "testX.csv").read_text().split("\n", 1)[0].split(",")
    assert train_header == ["Id", "Label", *map(str, range(1, 785))]
    assert test_header == ["Id", *map(str, range(784))]

    train = read_competition_csv(tmp_path / "train.csv")
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64 and train.ids.dtype == np.int64
    np.testing.assert_array_equal(train.images, sample.images)
    np.testing.assert_array_equal(train.labels, sample.labels)
    np.testing.assert_array_equal(train.ids, sample.ids)

    test_part = load_data("sample", split="test")
    written = read_competition_csv(tmp_path / "testX.csv", labelled=False)
    assert written.labels is None
    np.testing.assert_array_equal(written.images, test_part.images)
    np.testing.assert_array_equal(written.ids, test_part.ids)


def test_gzip_round_trip_and_crlf(sample, tmp_path):
    path = tmp_path / "train.csv.gz"
    write_competition_csv(path, sample.ids[:50], sample.images[:50], sample.labels[:50])
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    back = read_competition_csv(path)
    np.testing.assert_array_equal(back.images, sample.images[:50])
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(gzip.decompress(path.read_bytes()).replace(b"\n", b"\r\n"))
    np.testing.assert_array_equal(read_competition_csv(crlf).images, sample.images[:50])


def test_cut_off_gzip_is_one_error(tmp_path):
    data = (Path(__file__).parents[2] / "fashiondist/data/sample/testX.csv.gz").read_bytes()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CsvError, match=r"cut\.csv\.gz, line \d+: cannot be read"):
        read_competition_csv(cut)


def test_chunks_cover_the_file_in_order(small_csvs):
    whole = read_competition_csv(small_csvs["train"])
    chunks = list(iter_csv_chunks(small_csvs["train"], chunk_rows=7))
    assert [len(c) for c in chunks] == [7, 7, 7, 7, 2]
    np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), whole.images)
    np.testing.assert_array_equal(np.concatenate([c.labels for c in chunks]), whole.labels)
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), whole.ids)


@pytest.mark.parametrize("first", [1, 3, 7, 40])
def test_a_smaller_first_chunk_then_whole_chunks(small_csvs, first):
    """`first_chunk_rows` sizes only the first chunk (infer starts on it sooner); the rest are `chunk_rows`."""
    whole = read_competition_csv(small_csvs["train"])  # 30 rows
    chunks = list(iter_csv_chunks(small_csvs["train"], chunk_rows=7, first_chunk_rows=first))
    head = min(first, 30)
    rest = 30 - head
    assert [len(c) for c in chunks] == [head] + [7] * (rest // 7) + ([rest % 7] if rest % 7 else [])
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), whole.ids)
    np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), whole.images)
    with pytest.raises(ValueError, match="chunk sizes must be >= 1"):
        next(iter_csv_chunks(small_csvs["train"], chunk_rows=7, first_chunk_rows=0))


def test_chunk_errors_use_absolute_lines_and_see_earlier_chunks(small_csvs, tmp_path):
    """A duplicate of line 4's Id on line 27 is caught after six chunks of four rows were yielded."""
    bad = _corrupt(small_csvs["test"], lambda L: _set_cell(L, 27, 0, "106"), tmp_path / "dup.csv")
    yielded = []
    with pytest.raises(CsvError, match=r"line 27, column 'Id': duplicate Id 106 \(first on line 4\)$"):
        for chunk in iter_csv_chunks(bad, chunk_rows=4):
            yielded.append(len(chunk))
    assert yielded == [4] * 6  # lines 2..25

    bad = _corrupt(small_csvs["test"], lambda L: _set_cell(L, 23, 700, "nan"), tmp_path / "nan.csv")
    with pytest.raises(CsvError, match=r"line 23, column '699': pixel value 'nan' is not an integer$"):
        list(iter_csv_chunks(bad, chunk_rows=4))


def _assert_each_reads_as(whole: csvio.CsvTable, variants: dict[str, bytes], directory: Path) -> None:
    """Each file's bytes, written to `directory` under its name, read back as `whole`'s rows exactly."""
    for name, data in variants.items():
        (directory / name).write_bytes(data)
        back = read_competition_csv(directory / name)
        np.testing.assert_array_equal(back.images, whole.images, err_msg=name)
        np.testing.assert_array_equal(back.ids, whole.ids, err_msg=name)
        np.testing.assert_array_equal(back.labels, whole.labels, err_msg=name)


@pytest.mark.parametrize("segment_bytes", [1000, 5000])  # shorter than a row (~2 KB), and a few rows
def test_small_segments_read_the_same_rows_and_errors(small_csvs, tmp_path, monkeypatch, segment_bytes):
    """pyarrow parses the file a segment at a time; segment cuts fall mid-row and are invisible."""
    whole = read_competition_csv(small_csvs["train"])
    monkeypatch.setattr(csvio, "_SEGMENT_BYTES", segment_bytes)
    text = small_csvs["train"].read_bytes()
    variants = {
        "plain.csv": text,
        "crlf.csv": text.replace(b"\n", b"\r\n"),
        "no-final-newline.csv": text.rstrip(b"\n"),
        "gzipped.csv.gz": gzip.compress(text),
    }
    _assert_each_reads_as(whole, variants, tmp_path)
    bad = _corrupt(small_csvs["train"], lambda L: _set_cell(L, 23, 700, "nan"), tmp_path / "nan.csv")
    with pytest.raises(CsvError, match=r"line 23, column '699': pixel value 'nan' is not an integer$"):
        list(iter_csv_chunks(bad, chunk_rows=4))


@pytest.mark.shared_data
def test_ten_thousand_rows_parse_exactly(shared_data, tmp_path):
    """The real 10k t10k images as a testX.csv: read whole and in chunks, identical to the IDX source."""
    test_part = load_data(str(shared_data), split="test")
    path = tmp_path / "testX.csv"
    write_competition_csv(path, test_part.ids, test_part.images)
    np.testing.assert_array_equal(read_competition_csv(path).images, test_part.images)
    chunks = list(iter_csv_chunks(path, chunk_rows=3000))
    assert [len(c) for c in chunks] == [3000, 3000, 3000, 1000]
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), test_part.ids)


@pytest.mark.parametrize("segment_bytes", [None, 1000, 5000])  # whole file; cuts mid-row and between \r, \n
def test_old_mac_and_mixed_line_ends_read_the_same_rows(small_csvs, tmp_path, monkeypatch, segment_bytes):
    """`\\r`-only files (old Mac) once read as 0 rows: the header reader ended lines at `\\r`, the data
    reader only at `\\n`. Every line end, mixed in one file, now reads the same rows and lines."""
    if segment_bytes:
        monkeypatch.setattr(csvio, "_SEGMENT_BYTES", segment_bytes)
    whole = read_competition_csv(small_csvs["train"])
    lines = small_csvs["train"].read_bytes().splitlines()
    ends = [b"\r", b"\r\n", b"\n"]
    variants = {
        "cr.csv": b"\r".join(lines) + b"\r",
        "cr-no-final.csv": b"\r".join(lines),
        "mixed.csv": b"".join(line + ends[i % 3] for i, line in enumerate(lines)),
        "cr.csv.gz": gzip.compress(b"\r".join(lines) + b"\r"),
    }
    _assert_each_reads_as(whole, variants, tmp_path)
    bad = lines.copy()
    bad[22] = bad[22].replace(b",0,", b",x,", 1)  # line 23
    (tmp_path / "bad-cr.csv").write_bytes(b"\r".join(bad) + b"\r")
    with pytest.raises(CsvError, match=r"line 23, column '\d+': pixel value 'x' is not an integer$"):
        list(iter_csv_chunks(tmp_path / "bad-cr.csv", chunk_rows=4))


def test_old_mac_file_through_data_info(small_csvs, tmp_path, capsys):
    cr = tmp_path / "cr.csv"
    cr.write_bytes(small_csvs["test"].read_bytes().replace(b"\n", b"\r"))
    assert main(["data", "info", "--data", str(cr)]) == 0
    assert f"{ROWS}" in capsys.readouterr().out


LONG = 200_000  # longer than the csv module's field limit (131,072 characters)
OVER_LIMIT = re.escape(": cannot be split into cells: field larger than field limit (131072)")
# (case, the file's lines from a good file's, a regular expression for the one error line after the path)
LONG_FIELDS = [
    ("long header cell", lambda L: ["A" * LONG], ", line 1" + OVER_LIMIT),
    ("long quoted header name", lambda L: [L[0] + ',"' + "A" * LONG + '"', *L[1:]],
     ", line 1" + OVER_LIMIT),
    ("long quoted cell", lambda L: [*L[:5], L[5] + ',"' + "7" * LONG + '"', *L[6:]],
     ", line 6" + OVER_LIMIT),
    ("long unquoted cell", lambda L: [*L[:4], L[4].replace(",0,", "," + "A" * LONG + ",", 1), *L[5:]],
     rf", line 5, column '\d+': pixel value '{'A' * 40}\.\.\. \(200,000 characters\)' is not an integer"),
    ("long number", lambda L: [*L[:3], "9" * LONG + L[3][L[3].index(","):], *L[4:]],
     rf", line 4, column 'Id': Id {'9' * 40}\.\.\. \(200,000 characters\) does not fit in 64 bits"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in LONG_FIELDS], ids=[c[0] for c in LONG_FIELDS])
def test_a_field_longer_than_the_csv_limit_is_one_error(small_csvs, tmp_path, capsys, text, expected):
    """A cell over 131,072 characters was a `_csv.Error` traceback; a 200,000-digit Id a ValueError."""
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(text(small_csvs["test"].read_text().splitlines())) + "\n")
    out = tmp_path / "out"
    assert main(["data", "export-csv", "--data", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(f"fashiondist: error: {re.escape(str(bad))}{expected}\n", err), err
    assert not out.exists()
