"""The benchmarks' statistics: medians, paired ratios of repeats, and the rotation of the variants' order."""

from __future__ import annotations

from fashiondist.bench.stats import Stat, rotation


def test_ratios_pair_repeats_and_rotation_moves_the_first_variant():
    assert Stat.ratio([4.0, 9.0], [2.0, 3.0]).samples == (2.0, 3.0)
    assert Stat.of([3.0, 1.0, 2.0]).median == 2.0
    assert [rotation(["a", "b", "c"], r)[0] for r in range(3)] == ["a", "b", "c"]
