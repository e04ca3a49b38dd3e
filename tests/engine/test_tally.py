"""`TrainTally`: the pending micro-batches fold into the same sums and first bad step, however often it is read."""

from __future__ import annotations

import math

import torch

from fashiondist.engine.prepared import TrainTally


def _batch(loss: float, right: int, size: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, logits [size, 3], labels [size]) with `right` correct predictions."""
    logits = torch.zeros(size, 3)
    logits[:, 0] = 1.0  # every prediction is class 0
    labels = torch.tensor([0] * right + [1] * (size - right))
    return torch.tensor(loss), logits, labels


def _feed(tally: TrainTally, losses: list[float], read_every: int | None) -> None:
    for step, loss in enumerate(losses):
        tally.add(*_batch(loss, right=step % 5))
        tally.add(*_batch(1.0, right=1, size=2))  # a second micro-batch in the same step
        tally.next_step()
        if read_every and (step + 1) % read_every == 0:
            tally.sums  # noqa: B018 - a read folds what is pending


def test_sums_and_the_first_bad_step_do_not_depend_on_when_they_are_read():
    losses = [0.5, 0.25, 2.0, math.nan, 1.0, math.inf, 3.0]
    results = []
    for read_every in (None, 1, 2, 3):
        tally = TrainTally(torch.device("cpu"), step=10, sums=(1.0, 2.0, 3.0))
        _feed(tally, losses, read_every)
        results.append((tally.sums.tolist(), int(tally.first_bad)))
    spelled = [repr(r) for r in results]  # repr: a NaN equals a NaN
    assert all(s == spelled[0] for s in spelled)
    sums, first_bad = results[0]
    assert first_bad == 13  # step 10 + index 3, the NaN; the later inf does not move it
    assert sums[1] == 2.0 + sum(step % 5 for step in range(len(losses))) + len(losses)
    assert sums[2] == 3.0 + len(losses) * 6
    assert math.isnan(sums[0])  # a non-finite loss poisons the loss sum, as before


def test_a_finite_run_has_no_bad_step_and_exact_sums():
    tally = TrainTally(torch.device("cpu"), step=0)
    _feed(tally, [0.5, 0.25, 2.0], read_every=None)
    assert int(tally.first_bad) == -1
    assert tally.sums.tolist() == [4 * (0.5 + 0.25 + 2.0) + 3 * 2 * 1.0, 0 + 1 + 2 + 3, 18.0]
    assert tally.sums.tolist() == [4 * (0.5 + 0.25 + 2.0) + 3 * 2 * 1.0, 0 + 1 + 2 + 3, 18.0]  # read twice


def test_a_tally_nobody_reads_stays_small():
    tally = TrainTally(torch.device("cpu"), step=0)
    _feed(tally, [1.0] * 1000, read_every=None)
    assert len(tally._losses) < TrainTally._FOLD_AT
    assert tally.sums[2].item() == 6000
