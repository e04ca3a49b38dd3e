"""Check an output path before the work starts, so that a bad `--out` is one error line, not a traceback
after minutes of training or exporting. Every command that writes checks its outputs here.

    out = check_output_dir("runs/convnet", "--out")      # a directory that is, or can become, a directory
    out = check_output_file("model.onnx", "--out")       # a file in an existing directory

A path is writable when it is not in the way (a file where a directory goes, or the reverse), no ancestor
is a regular file, and the deepest existing ancestor takes a new file (probed by creating and removing a
temporary one: permission bits alone say nothing for root or on a read-only mount). Nothing is created.

Base layer: standard library only.
"""

from __future__ import annotations

import os
import string
import tempfile
from pathlib import Path

from fashiondist.errors import InputError


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """`path` as a Path, when it is a directory or can be created as one; else InputError naming `option`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: is a file, not a directory", hint="choose a directory path")
    _check_writable(path, option)
    return path


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """`path` as a Path, when a file can be written there (new, or replacing a file) in an existing directory;
    else InputError naming `option`."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a directory", hint="give a file name inside it")
    _check_writable(path.parent, option, shown=path)
    if not path.parent.is_dir():
        raise InputError(f"{option} {path}: the output directory {path.parent} does not exist")
    return path


def format_out_template(template: str, option: str, **fields: str) -> str:
    """`template` with its `{name}` placeholders filled from `fields`; any other placeholder is an InputError.

    A literal brace is written twice (`{{`, `}}`), as in Python's str.format.
    """
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:  # a lone `{` or `}`
        raise InputError(
            f"{option} {template}: {err}", hint="write a literal brace twice: {{ or }}"
        ) from None
    unknown = sorted({name for name in names if name not in fields})
    if unknown:
        known = ", ".join("{" + name + "}" for name in fields)
        raise InputError(
            f"{option} {template}: unknown placeholder {{{unknown[0]}}}",
            hint=f"the placeholders are {known}; write a literal brace twice: {{{{ or }}}}",
        )
    return template.format(**fields)


def _check_writable(directory: Path, option: str, shown: Path | None = None) -> None:
    """The deepest existing ancestor of `directory` (itself included) is a directory that takes a new file."""
    shown = shown if shown is not None else directory
    existing = directory
    while not existing.exists():
        if existing == existing.parent:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {shown}: {existing} is a file, so nothing can be created under it")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputError(f"{option} {shown}: cannot write in {existing} ({reason})") from None
