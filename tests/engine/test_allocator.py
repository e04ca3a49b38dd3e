"""engine.allocator: glibc keeps a training step's freed blocks, so later steps stop faulting pages in.

Each check runs in a fresh interpreter: the thresholds are process-wide and for the process's life.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fashiondist.engine.allocator import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt only: this C library is not glibc")

# A step's pattern: blocks of several sizes alive together, then all freed (activations and gradients), 45 MiB
# in all: above glibc's dynamic trim threshold (twice the largest block freed so far, 24 MiB), each under 32 MiB.
_STEPS = """
import json, resource, sys
import numpy as np
from fashiondist.engine.allocator import keep_freed_memory
said = keep_freed_memory() if sys.argv[1] == "tuned" else "untouched"
MIB = 1024 * 1024
def step():
    blocks = [np.ones(size * MIB, dtype=np.uint8) for size in (6, 12, 3, 8, 8, 8)]  # written: every page touched
    del blocks
step()  # the first step faults its pages in whatever the allocator does
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"said": said, "faults": faults, "pages_per_step": 45 * MIB // resource.getpagesize()}))
"""


def _run(mode: str, env: dict[str, str] | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")} | (
        env or {}
    )
    proc = subprocess.run(
        [sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(proc.stdout)


def test_later_steps_fault_no_pages_once_memory_is_kept():
    tuned, untouched = _run("tuned"), _run("untouched")
    assert tuned["said"] == "malloc: glibc keeps freed memory (blocks <= 32 MiB from the heap, no trim)"
    # kept: 20 more steps reuse the first step's pages; a few faults for the interpreter's own small objects
    assert tuned["faults"] < tuned["pages_per_step"] / 10, tuned
    # glibc's defaults trim the heap top between steps: 20 steps fault more than a whole step's pages in again
    assert untouched["faults"] > untouched["pages_per_step"], untouched


def test_a_users_malloc_settings_are_kept():
    env = {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}
    assert _run("tuned", env)["said"] == "malloc: glibc, as set in the environment"
    assert (
        _run("tuned", {"MALLOC_TRIM_THRESHOLD_": "1048576"})["said"]
        == "malloc: glibc, as set in the environment"
    )
