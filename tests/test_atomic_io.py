"""atomic_io: a file appears whole or not at all, and JSON is strict (no NaN token, numpy unwrapped)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fashiondist.atomic_io import atomic_write, to_jsonable, write_json, write_text


def test_json_is_strict_and_plain(tmp_path: Path):
    payload = {
        "acc": np.float32(0.5),
        "counts": np.arange(3),
        "loss": math.nan,
        "run": tmp_path,
        1: (np.int64(2),),
    }
    path = write_json(tmp_path / "out.json", payload)
    text = path.read_text()
    assert "NaN" not in text and text.endswith("\n")
    assert json.loads(text) == {"acc": 0.5, "counts": [0, 1, 2], "loss": None, "run": str(tmp_path), "1": [2]}


def test_to_jsonable_uses_to_dict():
    class Stat:
        def to_dict(self):
            return {"median": float("inf")}

    assert to_jsonable([Stat()]) == [{"median": None}]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path):
    path = write_text(tmp_path / "report.md", "old\n")
    with pytest.raises(RuntimeError), atomic_write(path) as handle:
        handle.write(b"half")
        raise RuntimeError("failed half way")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
