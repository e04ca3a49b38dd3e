"""Child processes of the end-to-end benchmarks: started with this interpreter, with this fashiondist importable."""

from __future__ import annotations

import os
from pathlib import Path


def child_env() -> dict[str, str]:
    """Our environment with the directory holding this `fashiondist` first on PYTHONPATH, so that
    `python -m fashiondist` in the child runs the same code from a checkout as from an installed package."""
    import fashiondist

    root = str(Path(fashiondist.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def last_line(stderr: str, empty: str) -> str:
    """The last line a failed child wrote (its error, as a rule), or `empty` when it wrote nothing."""
    return (stderr.strip().splitlines() or [empty])[-1]
