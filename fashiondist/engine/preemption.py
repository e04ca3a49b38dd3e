"""Cluster preemption: SIGTERM or the preemption signal asks the run to save `last/` at the next step
boundary and exit 0.

The preemption signal is SIGUSR1 unless FASHIONDIST_PREEMPT_SIGNAL says USR2: some NCCL versions install
their own SIGUSR1 handler (NVIDIA/nccl issue 704), which is why submitit moved to SIGUSR2. It is a property of
the launch (the scheduler's `--signal`), not a hyperparameter, so it is an environment variable that
launch/torchrun.sh, launch/accelerate.sh and launch/slurm/train.sbatch read too.

The handler only records the signal; the training loop polls `requested(accelerator)` between optimizer
steps. The flag is max-reduced across ranks, so all ranks stop at the same step even when the signal reached
only one of them.
"""

from __future__ import annotations

import os
import signal
import threading

import torch

from fashiondist.errors import InputError

PREEMPT_SIGNAL_ENV = "FASHIONDIST_PREEMPT_SIGNAL"
PREEMPT_SIGNALS = ("USR1", "USR2")  # the first is the default


def preempt_signal(env=None) -> signal.Signals:
    """The preemption signal FASHIONDIST_PREEMPT_SIGNAL names (USR1 or USR2, with or without SIG), else SIGUSR1."""
    env = os.environ if env is None else env
    raw = env.get(PREEMPT_SIGNAL_ENV, "").strip()
    name = raw.upper().removeprefix("SIG") or PREEMPT_SIGNALS[0]
    if name not in PREEMPT_SIGNALS:
        raise InputError(
            f"{PREEMPT_SIGNAL_ENV}={raw!r}: not a preemption signal; use one of {', '.join(PREEMPT_SIGNALS)}"
        )
    return signal.Signals[f"SIG{name}"]


def _signals() -> tuple[signal.Signals, ...]:
    return (signal.SIGTERM, preempt_signal())


class PreemptionWatch:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in _signals():
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
