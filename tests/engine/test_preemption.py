"""PreemptionWatch: SIGTERM or SIGUSR1 is recorded (not acted on) while the block runs, and the handlers that
were installed before come back after it. One process reads its own flag at every step; the whole SIGTERM
path through a real run (save last/, exit 0, resume bitwise) is tests/engine/test_training.py's."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from accelerate import Accelerator

from fashiondist.engine.preemption import PreemptionWatch

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")


@pytest.fixture(scope="module")
def acc(fresh_accelerate) -> Accelerator:
    return Accelerator(cpu=True, mixed_precision="no")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_is_recorded_and_the_run_asked_to_stop(acc, signum):
    with PreemptionWatch() as watch:
        assert not watch.requested(acc, step=0)
        os.kill(os.getpid(), signum)  # delivered before the next bytecode: the handler only records it
        assert watch.signal_name == signal.Signals(signum).name
        assert watch.requested(acc, step=3)  # one process: at any step, no all-reduce to wait for


def test_the_previous_handlers_come_back(acc):
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    try:
        term_before = signal.getsignal(signal.SIGTERM)
        with PreemptionWatch():
            assert signal.getsignal(signal.SIGUSR1) is not previous
        assert signal.getsignal(signal.SIGTERM) == term_before
        os.kill(os.getpid(), signal.SIGUSR1)
        assert calls == [signal.SIGUSR1]  # the handler from before the run, not the watch's
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_off_the_main_thread_it_installs_nothing():
    """Python accepts signal handlers from the main thread only; elsewhere the watch stays passive."""
    seen = []

    def body():
        before = signal.getsignal(signal.SIGTERM)
        with PreemptionWatch() as watch:
            seen.append((signal.getsignal(signal.SIGTERM) == before, watch.signal_name))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [(True, None)]
