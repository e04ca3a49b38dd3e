"""The benchmarks' statistics: medians, paired ratios of repeats, and the rotation of the variants' order."""

from __future__ import annotations

from fashiondist.bench.stats import Stat, rotation


def test_ratios_pair_repeats_and_rotation_moves_the_first_variant():
    assert Stat.ratio([4.0, 9.0], [2.0, 3.0]).samples == (2.0, 3.0)
    assert Stat.of([3.0, 1.0, 2.0]).median == 2.0
    assert [rotation(["a", "b", "c"], r)[0] for r in range(3)] == ["a", "b", "c"]


def test_best_ratio_takes_each_sides_fastest_repeat_and_survives_json():
    """Rates (higher is faster): max over max; seconds (lower is faster): min over min. A slow spell in one
    repeat of one side moves the paired median, not `best`."""
    from fashiondist.bench.report import fmt_ratio

    rates = Stat.ratio([10.0, 4.0, 9.0], [8.0, 8.0, 3.0])  # repeat 2 of the first, 3 of the second: slowed
    assert rates.samples == (1.25, 0.5, 3.0) and rates.best == 10.0 / 8.0
    seconds = Stat.ratio([2.0, 5.0, 2.2], [1.6, 1.7, 4.0], min)
    assert seconds.best == 2.0 / 1.6
    again = Stat.from_dict(seconds.to_dict())
    assert again == seconds and fmt_ratio(again).splitlines()[-1] == "best 1.25x"
    assert "best" not in Stat.of([1.0, 2.0]).to_dict()
    assert fmt_ratio(Stat.of([1.0, 2.0])) == "1.50x\n1.00-2.00"
