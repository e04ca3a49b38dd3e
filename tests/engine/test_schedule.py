"""The learning-rate schedule: every branch of `lr_at`, against values worked out by hand from its definition
(linear warm-up over the first warmup_fraction of the steps, then linear, half-cosine or constant)."""

from __future__ import annotations

import math

import pytest

from fashiondist.config import Schedule
from fashiondist.engine.schedule import lr_at

PEAK = 0.8
TOTAL = 10  # optimizer steps; warm-up 0.2 of them = steps 0 and 1
ULPS = 4 * 2.0**-53  # a float64 expression evaluated two ways: each side within 2 ulps of the exact value

EXPECTED = {
    # step: (linear, cosine); after warm-up, progress = (step - 2) / 8
    0: (PEAK / 2, PEAK / 2),  # warm-up: peak x (step + 1) / 2
    1: (PEAK, PEAK),
    2: (PEAK, PEAK),  # progress 0
    4: (PEAK * 3 / 4, PEAK * (2 + math.sqrt(2)) / 4),  # progress 1/4: cos(pi/4) = sqrt(2)/2
    6: (PEAK / 2, PEAK / 2),  # progress 1/2: cos(pi/2) = 0
    8: (PEAK / 4, PEAK * (2 - math.sqrt(2)) / 4),  # progress 3/4: cos(3 pi/4) = -sqrt(2)/2
}


@pytest.mark.parametrize("step", sorted(EXPECTED))
@pytest.mark.parametrize(("schedule", "column"), [(Schedule.LINEAR, 0), (Schedule.COSINE, 1)])
def test_warmup_then_linear_or_cosine_decay(step: int, schedule: Schedule, column: int):
    expected = EXPECTED[step][column]
    assert lr_at(step, TOTAL, PEAK, 0.2, schedule) == pytest.approx(expected, rel=ULPS)


@pytest.mark.parametrize("schedule", [Schedule.LINEAR, Schedule.COSINE])
def test_decay_reaches_zero_after_the_last_step_and_never_rises(schedule: Schedule):
    rates = [lr_at(step, TOTAL, PEAK, 0.2, schedule) for step in range(TOTAL)]
    after_warmup = rates[1:]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:], strict=False))
    assert lr_at(TOTAL, TOTAL, PEAK, 0.2, schedule) == 0.0  # progress 1: (1 - 1) and (1 + cos pi) are exact
    assert min(rates) > 0.0  # every step of the run learns


def test_constant_is_flat_after_warmup_and_no_warmup_starts_at_the_peak():
    assert [lr_at(s, TOTAL, PEAK, 0.2, Schedule.CONSTANT) for s in range(TOTAL)] == [PEAK / 2] + [PEAK] * 9
    assert lr_at(0, TOTAL, PEAK, 0.0, Schedule.LINEAR) == PEAK
    assert lr_at(0, TOTAL, PEAK, 0.0, Schedule.COSINE) == PEAK


def test_the_old_name_onecycle_reads_as_linear():
    """Configs saved before the rename say `onecycle`; it was always this linear warm-up and decay."""
    assert Schedule("onecycle") is Schedule.LINEAR
    with pytest.raises(ValueError):
        Schedule("one-cycle")
