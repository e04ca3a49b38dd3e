"""The one way the tests forget accelerate's process state (as accelerate's own tests do).

accelerate keeps one state per process, and its mixed precision, fixed by the first Accelerator, cannot change
afterwards; tests that build Accelerators of several precisions in one process reset it here, through
accelerate's private `_reset_state` (test code only: the product never resets it)."""

from __future__ import annotations


def reset_accelerate() -> None:
    """Forget the process's accelerator and gradient state (the distributed part too)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
