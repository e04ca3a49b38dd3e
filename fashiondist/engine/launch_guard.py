"""What a rank checks about its launch, so that a cluster fault ends in one line instead of a hang or a
traceback.

    elastic_resume(configs, log)             # restarted by torchrun's agent: continue from OUT/last by itself
    orphan_guard()                           # the launcher dies -> this rank gets SIGTERM: saves and exits
    agree_on_config(accelerator, configs)    # ranks launched with different arguments refuse, in one line
    with peer_loss_as_one_line():            # a peer killed mid-collective: one line per surviving rank
        ...train...

Every rank calls these in the same order (`pipeline.train_all`), before any training collective.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from fashiondist.config import TrainConfig
from fashiondist.engine.preemption import preempt_signal
from fashiondist.errors import FashiondistError, InputError

RESTART_ENV = "TORCHELASTIC_RESTART_COUNT"  # set by torchrun's agent: 0, then 1, 2, ... after each restart
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Keys that may differ between ranks: where each rank prints its progress.
_PER_RANK_KEYS = ("quiet",)


def elastic_resume(configs: list[TrainConfig], log: Callable[[str], None]) -> list[TrainConfig]:
    """`configs` with `resume: auto` when torchrun's agent restarted this worker group (--max-restarts) and
    no --resume was given: the restarted workers continue from OUT/last (or start afresh when none was saved
    yet), with the same step count and schedule as a run that was never interrupted."""
    restarts = int(os.environ.get(RESTART_ENV, "0") or 0)
    if restarts <= 0:
        return configs
    if os.environ.get("RANK", "0") == "0":
        log(
            f"restart {restarts} by the elastic agent ({RESTART_ENV}={restarts}): resuming from the run's last/"
        )
    return [c if c.resume is not None else dataclasses.replace(c, resume="auto") for c in configs]


def orphan_guard() -> None:
    """Under a launcher (torchrun, accelerate launch, srun), ask Linux to send this rank SIGTERM when its
    launcher dies: killed by a signal it does not handle (SIGUSR1 to `accelerate launch` without
    launch/accelerate.sh) or by SIGKILL, it would otherwise leave the ranks training on as orphans. SIGTERM
    is a preemption signal here: the rank saves OUT/last at its next check and exits."""
    preempt_signal()  # a bad FASHIONDIST_PREEMPT_SIGNAL fails here, before any work
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        # No "parent already gone" check (getppid() == 1): in a container the launcher itself may be PID 1.
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def config_digest(configs: list[TrainConfig]) -> str:
    """A hash of the resolved configuration of every variant, as every rank must share it."""
    return hashlib.sha256(json.dumps(_shared(configs), sort_keys=True, default=str).encode()).hexdigest()


def _shared(configs: list[TrainConfig]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.to_dict().items() if k not in _PER_RANK_KEYS} for c in configs]


def agree_on_config(accelerator, configs: list[TrainConfig]) -> None:
    """Refuse, on every rank, in one line, a group whose ranks were launched with different configurations
    (`--batch-size 128` on one node, 256 on the other would hang in the first collective of another shape).

    One all-gather of each rank's digest (64 characters); the differing keys are named from a second gather
    of the configurations, made only on a mismatch."""
    if accelerator.num_processes == 1:
        return
    digests: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(digests, config_digest(configs))
    if len(set(digests)) == 1:
        return
    shared: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(shared, _shared(configs))
    mine, rank = shared[accelerator.process_index], accelerator.process_index
    other = next(i for i, d in enumerate(digests) if d != digests[rank]) if len(set(digests)) > 1 else rank
    raise InputError(
        f"rank {rank}: launched with another configuration than rank {other} ({_difference(mine, shared[other])})",
        hint="start every node with the same command, options and config file",
    )


def _difference(mine: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> str:
    if len(mine) != len(theirs):
        return f"{len(mine)} variant(s) here, {len(theirs)} there"
    for a, b in zip(mine, theirs, strict=True):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return f"{key}: {a.get(key)!r} here, {b.get(key)!r} there"
    return "the configurations differ"


def _peer_lost(error: BaseException) -> bool:
    """A collective failed because another rank is gone (killed, crashed, its node lost)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("gloo", "nccl", "connection", "broken pipe", "timed out", "timeout")
    )


@contextlib.contextmanager
def peer_loss_as_one_line() -> Iterator[None]:
    """A collective that fails because a peer died becomes one FashiondistError line (exit 1) on each
    surviving rank, instead of the backend's multi-line traceback; the launcher ends the group anyway."""
    try:
        yield
    except Exception as error:
        if not _peer_lost(error):
            raise
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        rank = dist.get_rank()
        raise FashiondistError(
            f"rank {rank}: another rank of the group is gone ({type(error).__name__}: {first[:160]}); stopping",
            hint="see the launcher's log for the rank that failed; continue with the same command plus --resume auto",
        ) from None


def backend_timeout() -> float | None:
    """The default process group's collective timeout in seconds (None without one): what dist_timeout set."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = dist.distributed_c10d._get_default_group()
    backend = group._get_backend(torch.device("cpu"))
    return backend.options._timeout.total_seconds()
