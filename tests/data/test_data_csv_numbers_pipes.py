"""One reader semantics for CSV numbers (decimal integers only) and input from pipes (issue 23, items 5, 12).

Hex was read as a number by the fast path (`0x10` as 16, rewriting a submission's Id) and refused by the
exact re-read; a pipe (`/dev/stdin`, a FIFO, `<(cat x.csv)`) lost its first bytes to the gzip sniff.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fashiondist.data.csvio import read_competition_csv, write_competition_csv
from fashiondist.data.sources import load_data
from fashiondist.errors import CsvError

ROWS = 5


@pytest.fixture(scope="module")
def plain_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    train = load_data("sample", split="train")
    path = tmp_path_factory.mktemp("csv") / "train.csv"
    write_competition_csv(path, train.ids[:ROWS], train.images[:ROWS], train.labels[:ROWS])
    return path


def _with_cell(path: Path, tmp: Path, line: int, column: int, value: str) -> Path:
    lines = path.read_text().splitlines()
    cells = lines[line - 1].split(",")
    cells[column] = value
    lines[line - 1] = ",".join(cells)
    out = tmp / "edited.csv"
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.parametrize(
    "column,value,problem",
    [
        (0, "0x10", "Id '0x10' is not an integer"),
        (0, "0X1F", "Id '0X1F' is not an integer"),
        (1, "0x3", "label '0x3' is not an integer"),
        (2, "0x1F", "pixel value '0x1F' is not an integer"),
        (600, '"0xff"', "pixel value '0xff' is not an integer"),
        (300, "-0", "pixel value -0 is negative"),
    ],
)
def test_only_decimal_integers(plain_csv: Path, tmp_path: Path, column: int, value: str, problem: str):
    edited = _with_cell(plain_csv, tmp_path, 4, column, value)
    with pytest.raises(CsvError, match="line 4, column .*: " + problem.replace("(", r"\(")):
        read_competition_csv(edited)


def _feed(path: Path, data: bytes) -> threading.Thread:
    def write():
        with open(path, "wb") as fifo:
            fifo.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_a_fifo_reads_whole(plain_csv: Path, tmp_path: Path, compressed: bool):
    data = plain_csv.read_bytes()
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    writer = _feed(fifo, gzip.compress(data) if compressed else data)
    table = read_competition_csv(fifo)
    writer.join(5)
    np.testing.assert_array_equal(table.images, read_competition_csv(plain_csv).images)
    assert len(table) == ROWS


def test_infer_reads_stdin_and_process_substitution(onnx_model: Path, sample_test_csv: Path, tmp_path: Path):
    """`infer /dev/stdin < x.csv` and bash's `<(cat x.csv)`: the same submission as the file itself."""
    cli = [sys.executable, "-m", "fashiondist", "infer"]
    plain = tmp_path / "testX.csv"
    plain.write_bytes(gzip.decompress(sample_test_csv.read_bytes()))
    outs = {name: tmp_path / f"{name}.csv" for name in ("file", "stdin", "substitution")}
    subprocess.run([*cli, str(plain), "--model", str(onnx_model), "--out", str(outs["file"])], check=True)
    with plain.open("rb") as stdin:
        subprocess.run(
            [*cli, "/dev/stdin", "--model", str(onnx_model), "--out", str(outs["stdin"])],
            stdin=stdin,
            check=True,
        )
    command = " ".join(
        [*cli, f"<(cat {plain})", "--model", str(onnx_model), "--out", str(outs["substitution"])]
    )
    subprocess.run(["bash", "-c", command], check=True, stdin=subprocess.DEVNULL)
    assert outs["stdin"].read_text() == outs["file"].read_text() == outs["substitution"].read_text()
