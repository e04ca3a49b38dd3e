"""Atomic writes and strict JSON for the report files.

Every report file is written to a temporary file in the same directory and renamed over the target, so a
crash or an error never leaves a half-written leaderboard, plot or best.json behind (DESIGN: on error no
output file remains). JSON is written with `allow_nan=False`: a NaN must be turned into null on purpose
(with a note) before writing, never leak out as the non-standard token `NaN` that strict parsers reject.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temp file + `os.replace`; the temp file is removed on any error.

    The temp file is created with mode 0o666 less the umask, like any file `open` creates (tempfile's
    mkstemp would leave the report readable by its owner only).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """Plain Python types for `json`: numpy scalars and arrays unwrapped, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: Path, payload: Any) -> Path:
    text = json.dumps(to_jsonable(payload), indent=2, allow_nan=False)
    return write_text_atomic(path, text + "\n")
