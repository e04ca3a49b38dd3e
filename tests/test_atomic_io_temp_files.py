"""atomic_write: the target is replaced whole or not at all, and no temp file outlives its writer.

SIGTERM used to end a writer on the spot (Python's default action), leaving its `.NAME...PID.tmp` behind;
now it removes it on the way out. kill -9 still leaves one, and the next write into the directory sweeps it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fashiondist.atomic_io import atomic_write

GOOD = b"Id,Label\n1,2\n"  # what an earlier, successful write left


def _temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def _temp_name_parts(directory: Path) -> tuple[str, int]:
    """(host, pid) as atomic_write puts them in its temp file names, seen from inside a write."""
    with atomic_write(directory / "probe"):
        (name,) = _temp_files(directory)  # .probe.<host>.<pid>.tmp
    (directory / "probe").unlink()
    host, pid = name.split(".")[-3:-1]
    return host, int(pid)


def _reaped_pid() -> int:
    """The pid of a process that has exited and been reaped: it names no process now."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_an_error_leaves_the_old_file_and_no_temp(tmp_path: Path):
    target = tmp_path / "submission.csv"
    target.write_bytes(GOOD)
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"Id,Label\n")
        raise RuntimeError("mid-write")
    assert target.read_bytes() == GOOD and _temp_files(tmp_path) == []


WRITER = """
import os, signal, sys, time
from fashiondist.atomic_io import atomic_write
# The dispositions a terminal's foreground job starts with: under `nohup` SIGHUP arrives ignored, and in a
# background job (`&`) so does SIGINT (then Python installs no KeyboardInterrupt handler); inherited, either
# would make the signal a no-op here and the test pass or fail by how pytest was started.
signal.signal(signal.SIGHUP, signal.SIG_DFL)
signal.signal(signal.SIGINT, signal.default_int_handler)
with atomic_write(sys.argv[1]) as f:
    f.write(b"Id,Label\\n3,")
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))
    time.sleep(30)  # the signal ends the process long before
"""


@pytest.mark.parametrize(
    ("signame", "code"), [("SIGTERM", 128 + 15), ("SIGHUP", 128 + 1), ("SIGINT", -signal.SIGINT)]
)
def test_a_signal_mid_write_removes_the_temp_file(tmp_path: Path, signame: str, code: int):
    """SIGTERM/SIGHUP exit 128 + signal with the cleanup run; Ctrl-C is Python's KeyboardInterrupt."""
    target = tmp_path / "submission.csv"
    target.write_bytes(GOOD)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WRITER), str(target), signame], capture_output=True, timeout=60
    )
    assert done.returncode == code, done.stderr.decode()
    assert target.read_bytes() == GOOD and _temp_files(tmp_path) == []


def test_kill_9_leaves_a_temp_file_that_the_next_write_sweeps(tmp_path: Path):
    host, _ = _temp_name_parts(tmp_path)
    target = tmp_path / "submission.csv"
    target.write_bytes(GOOD)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(target), "SIGKILL"])
    assert child.wait(timeout=60) == -signal.SIGKILL
    assert target.read_bytes() == GOOD
    assert _temp_files(tmp_path) == [f".submission.csv.{host}.{child.pid}.tmp"]
    with atomic_write(tmp_path / "other.csv") as f:  # any write into the directory sweeps it
        f.write(b"x")
    assert _temp_files(tmp_path) == [] and target.read_bytes() == GOOD


def test_the_sweep_keeps_live_writers_and_other_hosts_temp_files(tmp_path: Path):
    host, pid = _temp_name_parts(tmp_path)
    dead = _reaped_pid()
    keep = [
        f".a.csv.{host}.{pid}.tmp",  # this process: alive
        f".b.csv.other-host.{dead}.tmp",  # another machine's writer on a shared file system
        "notes.tmp",  # not ours
    ]
    for name in [*keep, f".c.csv.{host}.{dead}.tmp", f".d.csv.gz.{host}.{dead}.tmp"]:
        (tmp_path / name).write_bytes(b"partial")
    with atomic_write(tmp_path / "e.csv") as f:
        f.write(b"x")
    assert _temp_files(tmp_path) == sorted(keep)


def test_signal_handlers_are_restored_and_installed_ones_kept(tmp_path: Path):
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with atomic_write(tmp_path / "a.csv"):
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL  # SIGTERM raises SystemExit here
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with atomic_write(tmp_path / "b.csv"):
            assert signal.getsignal(signal.SIGTERM) is mine  # e.g. the trainer's preemption handler
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
