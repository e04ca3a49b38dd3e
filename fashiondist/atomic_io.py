"""Write a file so that it either appears whole or not at all (temp file in the same directory, then rename).

A path ending in `.gz` is gzip-compressed with the timestamp and file name left out of the gzip header, so
the bytes depend only on the content: the bundled sample regenerates byte for byte.
JSON is strict: a NaN is written as null on purpose, never as the token `NaN`.

No temp file outlives its writer: an exception, Ctrl-C or SIGTERM removes it on the way out, and one left by
a process that could not clean up (kill -9, a power cut) is swept by the next write into its directory.

A write that the file system refuses (a full disk, a read-only mount, no permission) is one InputError
naming the file and the reason (exit 2), the temp file removed and the old file intact; removing the temp
file never raises over that error (on a read-only mount the removal fails too). A path that exists and is
not a regular file (a device, a FIFO, a symlink, a socket) is never written: see output_paths, which
commands call before any work; this is the last line of that defence.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import math
import os
import re
import signal
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fashiondist.errors import InputError

# Temp files are `.<name>.<host>.<pid>.tmp`: the host keeps a sweep on a shared file system (a cluster's runs/)
# from judging another machine's writer by a pid of this one.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"
_TEMP_NAME = re.compile(r"\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>[0-9]+)\.tmp")
# Signals whose default action ends the process on the spot, skipping every `except` and `finally`.
_TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
# What the file system says when it will not take a write, with what the user can do about it.
WRITE_REFUSALS = {
    errno.ENOSPC: "free space on that file system, or write elsewhere",
    errno.EDQUOT: "free space within your quota, or write elsewhere",
    errno.EFBIG: "the file system takes no file this large: write elsewhere",
    errno.EROFS: "the file system is mounted read-only: write elsewhere",
    errno.EACCES: "no permission to write there: write elsewhere, or change its permissions",
    errno.EPERM: "not permitted there: write elsewhere",
}


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` only when the block finishes without an exception.

    The temp file lives next to `path` (same file system, so `os.replace` is atomic) and is removed on any
    error, Ctrl-C or SIGTERM, so a failed write leaves neither a partial file nor a stray temp file behind.
    """
    path = Path(path)
    _refuse_special(path)
    _sweep_orphans(path.parent)
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.tmp")
    with _termination_raises():
        try:
            with open(tmp, "wb") as raw:
                if path.suffix == ".gz":
                    # filename="" and mtime=0 keep the header free of anything but the content's own bytes;
                    # level 6: on the sample, level 9 is 10x slower for 1% fewer bytes
                    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz:
                        yield gz  # type: ignore[misc]  # GzipFile is a binary file
                else:
                    yield raw
            os.replace(tmp, path)
        except BaseException as err:
            with contextlib.suppress(OSError):  # a read-only mount refuses this too: the real error wins
                tmp.unlink(missing_ok=True)
            refusal = write_refusal(err, path, tmp)
            if refusal is not None:
                raise refusal from None
            raise


def write_refusal(
    err: BaseException, path: str | os.PathLike, *written: str | os.PathLike
) -> InputError | None:
    """The one-line InputError for an OSError the file system raised writing `path` (a full disk, a read-only
    mount, no permission), or None for any other error. An OSError naming a file that is neither `path` nor
    one of `written` (an input read inside the write's block) is not a write error: None."""
    if not isinstance(err, OSError) or err.errno not in WRITE_REFUSALS:
        return None
    ours = {os.fspath(p) for p in (path, *written)}
    if err.filename is not None and os.fspath(err.filename) not in ours:
        return None
    reason = err.strerror or os.strerror(err.errno)
    return InputError(f"{path}: cannot write ({reason})", hint=WRITE_REFUSALS[err.errno])


def _refuse_special(path: Path) -> None:
    """InputError when `path` exists and is not a regular file: a rename over it would replace a device, a
    FIFO or a symlink with a regular file (output_paths.check_output_file says so before any work)."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return  # nothing there (or unreadable: the write itself says so)
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: exists and is not a regular file; refusing to replace it")


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_write(path) as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """numpy values unwrapped, paths as text, `to_dict()` objects as dicts, NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # without importing numpy
        return to_jsonable(value.tolist())
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, payload: Any) -> Path:
    return write_text(path, json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n")


@contextlib.contextmanager
def _termination_raises() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise SystemExit(128 + signal number) instead of ending the
    process on the spot, so the cleanup above runs and the exit status is the shell's usual 143 (129).

    Only where the signal still has its default action (a handler someone installed, such as the trainer's
    preemption handler, is theirs to keep) and only on the main thread (Python runs handlers there alone).
    """
    replaced = {}
    if threading.current_thread() is threading.main_thread():
        for signum in _TERMINATING:
            if signal.getsignal(signum) == signal.SIG_DFL:
                replaced[signum] = signal.signal(signum, _exit_by_signal)
    try:
        yield
    finally:
        for signum, previous in replaced.items():
            signal.signal(signum, previous)


def _exit_by_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _sweep_orphans(directory: Path) -> None:
    """Remove the temp files in `directory` that writers on this host left when they died without cleaning up."""
    if os.name != "posix":
        return  # os.kill(pid, 0) probes a pid on POSIX only (on Windows, signal 0 is CTRL_C_EVENT)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return  # a missing or unreadable directory: the write itself says so
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match and match["host"] == _HOST and not _alive(int(match["pid"])):
            with contextlib.suppress(OSError):  # another sweeper got there first
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a zombie counts: its temp file is left alone)."""
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only existence and permission are checked
    except (ProcessLookupError, OverflowError):  # no such process; a number no pid can be
        return False
    except PermissionError:  # another user's process
        return True
    return True
