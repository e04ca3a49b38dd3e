"""Benchmark output: rich tables on stdout and one JSON file, written atomically.

Table cells show the median over the repeats with the min-max on a second line: `12,345` over
`11,900-12,600` for images/s, `1.23x` over `1.10-1.30` for ratios, and for a ratio a third line, `best
1.31x`: each side's fastest repeat against the other's (stats.Stat.best).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fashiondist.atomic_io import write_json
from fashiondist.bench.machine import load_average
from fashiondist.bench.stats import Stat
from fashiondist.output_paths import check_output_file


def _fmt(stat: Stat | None, number: str, suffix: str = "") -> str:
    """The median, and under it the min-max of the repeats; a dash when not measured."""
    if stat is None:
        return "-"
    median = f"{stat.median:{number}}{suffix}"
    if len(stat.samples) == 1:
        return median
    best = "" if stat.best is None else f"\nbest {stat.best:{number}}{suffix}"
    return f"{median}\n{stat.min:{number}}-{stat.max:{number}}{best}"


def fmt_rate(stat: Stat | None) -> str:
    """Images/s: `12,345` over `11,900-12,600`."""
    return _fmt(stat, ",.0f")


def fmt_seconds(stat: Stat | None) -> str:
    return _fmt(stat, ".2f", " s")


def fmt_ratio(stat: Stat | None) -> str:
    return _fmt(stat, ".2f", "x")


def check_json_target(path: str | Path | None) -> Path | None:
    """Fail before any measuring when the JSON file could not be written (see `output_paths`)."""
    return None if path is None else check_output_file(path, "--json")


def write_bench_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (with the load average at the end of the run added) atomically; no NaN allowed."""
    return write_json(path, {**payload, "load_average_end": load_average()})
