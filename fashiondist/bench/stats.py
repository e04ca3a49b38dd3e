"""How every benchmark times: `time.perf_counter`, CUDA synchronised, variants interleaved, medians over repeats.

    order = rotation(["engine", "bare_step"], repeat)     # a different variant goes first in each repeat
    seconds = timed(step, calls=50, device=device)        # synchronised before and after on a GPU
    stat = Stat.of(per_repeat_images_per_s)               # median, min, max of the repeats
    speedup = Stat.ratio(engine_samples, bare_samples)    # paired per repeat, then the median; and `best`:
                                                          # each side's fastest repeat against the other's

Torch-free to import (the inference benchmark's end-to-end part needs none); `synchronize` imports it lazily.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stat:
    """One measured quantity over repeats (images/s, seconds or a ratio)."""

    samples: tuple[float, ...]
    # A ratio's other estimate: the numerator's fastest repeat over the denominator's (`ratio`). On a shared
    # machine the noise only ever slows a repeat down, so each side's fastest repeat is its least disturbed;
    # a paired ratio is hostage to which of the two a slow spell hit.
    best: float | None = None

    @classmethod
    def of(cls, values: Sequence[float], best: float | None = None) -> Stat:
        if not values:
            raise ValueError("a Stat needs at least one sample")
        return cls(tuple(float(v) for v in values), None if best is None else float(best))

    @classmethod
    def ratio(
        cls, numerators: Sequence[float], denominators: Sequence[float], fastest: Callable = max
    ) -> Stat:
        """Per-repeat ratios of two series measured side by side (repeat i of one against repeat i of the other),
        and `best`: fastest(numerators) / fastest(denominators), `fastest` being max for rates, min for seconds."""
        if len(numerators) != len(denominators):
            raise ValueError(f"paired ratio of {len(numerators)} and {len(denominators)} samples")
        paired = [n / d for n, d in zip(numerators, denominators, strict=True)]
        return cls.of(paired, fastest(numerators) / fastest(denominators))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stat:
        """What `to_dict` wrote (a benchmark's JSON), back as a Stat."""
        return cls.of(d["samples"], d.get("best"))

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def to_dict(self) -> dict[str, Any]:
        out = {"median": self.median, "min": self.min, "max": self.max, "samples": list(self.samples)}
        return out if self.best is None else {**out, "best": self.best}


def rotation(names: Sequence[str], repeat: int) -> list[str]:
    """The order to measure `names` in during repeat `repeat`: rotated by one each repeat, so no variant is
    always first (cold) or always last (after the others have warmed or heated the machine)."""
    k = repeat % len(names) if names else 0
    return list(names[k:]) + list(names[:k])


def synchronize(device: Any = None) -> None:
    """Wait for queued GPU work (a no-op on the CPU, where every op has finished when it returns)."""
    if device is None or getattr(device, "type", str(device)) != "cuda":
        return
    import torch

    torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], calls: int, device: Any = None) -> float:
    """Seconds for `calls` calls of `fn`, synchronised before the clock starts and before it stops."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return time.perf_counter() - start


def calls_for(fn: Callable[[], object], min_seconds: float, device: Any = None, at_least: int = 2) -> int:
    """How many calls of `fn` take about `min_seconds` (from one timed call, after the caller's warm-up)."""
    one = timed(fn, 1, device)
    return max(at_least, int(min_seconds / max(one, 1e-6)) + 1)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with torch using `threads` intra-op threads (None: leave torch's default), then restore."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
