"""The one policy for the package's optional C extensions in the tests: where one was not built (no C compiler
at install) its tests skip, except under CI=true, where the machine has a compiler and a skip would hide a
broken build."""

from __future__ import annotations

import os

import pytest


def require_built(extension: object | None, name: str) -> object:
    """`extension` (the loaded module or a callable from it); skip, or fail under CI=true, where it is None."""
    if extension is None:
        why = f"{name} is not built (no C compiler when the package was installed)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)
    return extension
