"""One training at a time per run directory: `OUT/.lock`, held with an exclusive `flock` for the run's life.

Two `train` runs into one `--out` used to both finish, with metrics.jsonl mixing them and best/ from one.
Now the second refuses at once with one line naming the holder's pid and host. The kernel releases a flock
when its holder dies, however it dies (kill -9 included), so a lock file left by a dead process is simply
taken over, and the run says so on stderr. The file holds `{"pid", "host", "started"}` for the messages.

Under DDP only the main process locks; it broadcasts the outcome before any other process-group work, so
every rank raises the same one-line error together instead of waiting in a collective that never comes.
POSIX only (fcntl); elsewhere runs are not locked.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from fashiondist.errors import InputError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None


class RunInUse(InputError):
    """Another live process holds the run directory's lock."""


@contextlib.contextmanager
def run_lock(directory: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold `directory`'s lock (created with the directory) while the block runs; RunInUse when it is held."""
    if fcntl is None:
        yield
        return
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    try:
        fd = _acquire(path)
    except RunInUse:
        _remove_if_empty(directory, created)
        raise
    try:
        previous = _read_holder(fd)
        if previous:
            log(
                f"{path}: took over the lock of process {previous.get('pid')} on {previous.get('host')}, "
                "which ended without releasing it"
            )
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # before the unlock: a process waiting on this inode then sees it gone (below)
        os.close(fd)
        _remove_if_empty(directory, created)


def _remove_if_empty(directory: Path, created: bool) -> None:
    """A run that failed before writing anything leaves no empty directory that it created."""
    if created:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _acquire(path: Path) -> int:
    """An fd of `path` with the exclusive lock held, or RunInUse naming the holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = (
                f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
                if holder
                else "another process"
            )
            raise RunInUse(
                f"--out {path.parent}: in use by {who} (lock {path})",
                hint="wait for that run to end, or train into another --out",
            ) from None
        # The holder may have unlinked the file between our open and our lock: then lock the new one.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def main_process_lock(
    accelerator: Accelerator, directory: Path, log: Callable[[str], None]
) -> Iterator[None]:
    """`run_lock` on the main process; every rank learns a refusal (by broadcast) and raises it too."""
    with contextlib.ExitStack() as stack:
        refusal = [None]
        if accelerator.is_main_process:
            try:
                stack.enter_context(run_lock(directory, log))
            except RunInUse as err:
                refusal = [(err.message, err.hint)]
        refusal = broadcast_object_list(refusal)
        if refusal[0] is not None:
            raise RunInUse(*refusal[0])
        yield
