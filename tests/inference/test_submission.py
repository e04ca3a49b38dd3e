"""The submission writer on its own: `Id,Label` (+ `prob_k`), rows in the order written, streamed in several
writes, probabilities as 6 significant digits, and bad calls refused before a byte is renamed into place."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fashiondist.data.sources import load_data
from fashiondist.errors import InputError
from fashiondist.inference import open_submission, write_submission


@pytest.fixture(scope="module")
def test_part():
    return load_data("sample", split="test")


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def test_streamed_writes_keep_order_and_count_rows(tmp_path: Path, test_part):
    ids = test_part.ids
    labels = (ids * 7) % 10  # any integer labels, one per id
    out = tmp_path / "submission.csv"
    with open_submission(out) as writer:
        for start in range(0, len(ids), 300):  # 300, 300, 300, 100
            writer.write(ids[start : start + 300], labels[start : start + 300])
        assert not out.exists(), "nothing is in place before the last row"
    assert writer.rows == len(ids)
    rows = _rows(out)
    assert rows[0] == ["Id", "Label"]
    assert rows[1:] == [[str(i), str(y)] for i, y in zip(ids.tolist(), labels.tolist(), strict=True)]


def test_probability_columns_hold_six_significant_digits(tmp_path: Path, test_part):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(test_part.ids), 10)) * 4
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    out = write_submission(tmp_path / "p.csv", test_part.ids, probs.argmax(1), probs)
    rows = _rows(out)
    assert rows[0] == ["Id", "Label"] + [f"prob_{k}" for k in range(10)]
    written = np.array([[float(v) for v in row[2:]] for row in rows[1:]])
    assert all(len(v.replace(".", "").lstrip("0").split("e")[0]) <= 6 for row in rows[1:] for v in row[2:])
    # "{:.6g}" rounds to 6 significant digits: within half a unit in the sixth, 5e-6 relative
    np.testing.assert_allclose(written, probs.astype(np.float64), rtol=5e-6, atol=0)
    assert [int(r[1]) for r in rows[1:]] == probs.argmax(1).tolist()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda w: w.write(np.array([1, 2]), np.array([1])), "2 ids but 1 labels"),
        (lambda w: w.write(np.array([1]), np.array([1]), np.zeros((1, 3))), r"probs must be \[1, 10\]"),
        (lambda w: w.write(np.array([1]), np.array([1])), r"probs must be \[1, 10\]"),
    ],
)
def test_bad_calls_raise_and_leave_the_old_file(tmp_path: Path, call, message):
    out = tmp_path / "submission.csv"
    out.write_text("Id,Label\n1,2\n")
    with pytest.raises(ValueError, match=message), open_submission(out, num_classes=10) as writer:
        call(writer)
    assert out.read_text() == "Id,Label\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_a_missing_directory_or_a_directory_target_is_one_input_error(tmp_path: Path):
    with pytest.raises(InputError, match="the output directory .* does not exist"):
        write_submission(tmp_path / "nope" / "s.csv", np.array([1]), np.array([0]))
    with pytest.raises(InputError, match="is a directory"):
        write_submission(tmp_path, np.array([1]), np.array([0]))
