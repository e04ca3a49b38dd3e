"""`fashiondist data info|export-csv` through the real entry point, and the sample's byte-exact regeneration."""

from __future__ import annotations

import re

import pytest

from fashiondist.cli import main
from fashiondist.data import make_sample
from fashiondist.data.sources import SAMPLE_DIR


def _row(out: str, label: int) -> str:
    return next(line for line in out.splitlines() if re.match(rf"│\s+{label} │", line))


def test_info_on_the_sample(capsys):
    assert main(["data", "info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"images\s+│ 9,000", out) and re.search(r"classes\s+│ 10\b", out)
    assert re.search(r"pixel mean\s+│ \d+\.\d{4}", out) and re.search(r"pixel std\s+│ \d+\.\d{4}", out)
    assert "T-shirt/top" in _row(out, 0) and "900" in _row(out, 0) and "Ankle boot" in _row(out, 9)


def test_info_on_the_test_part(capsys, tmp_path):
    assert main(["data", "info", "--data", "sample", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"images\s+│ 1,000", out) and "unlabelled" in out and "images per class" not in out
    assert main(["data", "export-csv", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["data", "info", "--data", str(tmp_path / "testX.csv")]) == 0  # a test file: its only part
    out = capsys.readouterr().out
    assert re.search(r"split\s+│ test", out) and re.search(r"images\s+│ 1,000", out)


@pytest.mark.shared_data
def test_info_on_the_shared_dataset(shared_data, capsys):
    assert main(["data", "info", "--data", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"images\s+│ 60,000", out) and re.search(r"classes\s+│ 10\b", out)
    assert all(re.search(r"│\s+6,000 │\s+10\.0% │", _row(out, k)) for k in range(10))
    # the full training set's statistics are the ones the models normalise with (constants.py)
    assert re.search(r"pixel mean\s+│ 72\.9404", out) and re.search(r"pixel std\s+│ 90\.0212", out)


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["data", "export-csv", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "fashiondist data export-csv --data sample --out csv/" in out and "--data SOURCE" in out
    with pytest.raises(SystemExit):
        main(["data", "info", "--split", "val"])
    assert "invalid choice: 'val'" in capsys.readouterr().err


def test_export_replaces_an_existing_file_whole(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("stale")
    assert main(["data", "export-csv", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "train.csv").read_text().startswith("Id,Label,1,2,3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["testX.csv", "train.csv"], "no temp files left"
    assert "9,000" in capsys.readouterr().out


@pytest.mark.shared_data
def test_make_sample_is_byte_reproducible(shared_data, tmp_path):
    make_sample.main(["--src", str(shared_data), "--out", str(tmp_path)])
    bundled = sorted(p.name for p in SAMPLE_DIR.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == bundled
    for name in bundled:
        assert (tmp_path / name).read_bytes() == (SAMPLE_DIR / name).read_bytes(), name


@pytest.mark.shared_data
def test_info_pixel_statistics_take_memory_flat_in_the_image_count(shared_data):
    """The 60k images' histogram is counted a chunk at a time: traced numpy memory stays under the uint8
    images' own size (one whole-array bincount made an int64 copy, 8x it), and the mean and std are exact."""
    import tracemalloc

    import numpy as np

    from fashiondist.cli.data import _STATS_CHUNK_PIXELS, _pixel_stats
    from fashiondist.data.sources import load_data

    dataset = load_data(str(shared_data), split="train")
    tracemalloc.start()
    try:
        mean, std = _pixel_stats(dataset)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 8 * _STATS_CHUNK_PIXELS + (1 << 20)  # one chunk's int64 counts, plus small change
    assert peak < dataset.images.nbytes / 4
    pixels = dataset.images.astype(np.float64)  # the float64 reference, after the trace
    # float64 sums of 47M terms: relative error ~1e-16 x 47M ~ 5e-9, far inside the 4 printed decimals
    assert mean == pytest.approx(pixels.mean(), rel=1e-9) and std == pytest.approx(pixels.std(), rel=1e-9)
