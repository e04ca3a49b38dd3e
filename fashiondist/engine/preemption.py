"""Cluster preemption: SIGTERM or SIGUSR1 asks the run to save `last/` at the next step boundary and exit 0.

The handler only records the signal; the training loop polls `requested(accelerator)` between optimizer
steps. The flag is max-reduced across ranks, so all ranks stop at the same step even when the signal reached
only one of them.
"""

from __future__ import annotations

import signal
import threading

import torch

_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None
)


class PreemptionWatch:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def requested(self, accelerator, step: int, every: int = 10) -> bool:
        """True on every rank when any rank has received a preemption signal.

        One process checks its own flag at every step (free). Several processes agree through an all-reduce,
        every `every` steps (the same steps on all ranks), so a GPU is not synchronised at every step.
        """
        if accelerator.num_processes == 1:
            return self.signal_name is not None
        if step % every:
            return False
        flag = torch.tensor([1.0 if self.signal_name else 0.0], device=accelerator.device)
        return bool(
            accelerator.reduce(flag, reduction="sum").item() > 0
        )  # several processes (1 returned above)
