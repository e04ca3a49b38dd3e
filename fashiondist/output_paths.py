"""Check an output path before the work starts, so that a bad `--out` is one error line, not a traceback
after minutes of training or exporting. Every command that writes checks its outputs here.

    out = check_output_dir("runs/convnet", "--out")      # a directory that is, or can become, a directory
    out = check_output_file("model.onnx", "--out", inputs=[model_path], run_dirs=[run_dir])

A path is writable when it is not in the way (a file where a directory goes, or the reverse), no ancestor
is a regular file, and the deepest existing ancestor takes a new file (probed by creating and removing a
temporary one: permission bits alone say nothing for root or on a read-only mount). Nothing is created.

An output file is a new path or an existing regular file, nothing else: a device (`/dev/null`: as root, a
rename over it would replace the system's), a FIFO (a write to one with no reader hangs), a socket or a
directory is refused. A symbolic link is refused too, whatever it points to: the write renames a temp file
over the path, which would replace the link itself (not its target) and so surprise whoever made it; give
the target's own path instead. An output file must not be one of the command's own inputs (the same file
by any name: hard links, `..`, symlinked directories) nor lie inside a run directory the command reads
(`export RUN --out RUN/last/model.safetensors` would destroy the run it exports).

Base layer: standard library only.
"""

from __future__ import annotations

import os
import stat
import string
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from fashiondist.errors import InputError

# the inputs an output must not be: paths, or a mapping from what each is ("the model") to its path
Inputs = Iterable[str | os.PathLike | None] | Mapping[str, str | os.PathLike | None]


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """`path` as a Path, when it is a directory or can be created as one; else InputError naming `option`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: is a file, not a directory", hint="choose a directory path")
    _check_writable(path, option)
    return path


def check_output_file(
    path: str | os.PathLike,
    option: str,
    inputs: Inputs = (),
    run_dirs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """`path` as a Path, when a new file can be written there or a regular file replaced, in an existing
    directory, and it is none of `inputs` and lies in none of `run_dirs`; else InputError naming `option`."""
    path = Path(path)
    kind = _special_kind(path)
    if kind == "a directory":
        raise InputError(f"{option} {path}: is a directory", hint="give a file name inside it")
    if kind is not None:
        raise InputError(
            f"{option} {path}: is {kind}, not a regular file",
            hint="name a new file or an existing regular file"
            + ("; a link is not followed: give its target's path" if kind == "a symbolic link" else ""),
        )
    _check_writable(path.parent, option, shown=path)
    if not path.parent.is_dir():
        raise InputError(f"{option} {path}: the output directory {path.parent} does not exist")
    check_not_an_input(path, option, inputs, run_dirs)
    return path


def check_not_an_input(
    path: str | os.PathLike,
    option: str,
    inputs: Inputs = (),
    run_dirs: Iterable[str | os.PathLike | None] = (),
) -> None:
    """InputError when the output `path` is one of `inputs` (the same file by any name) or lies inside one of
    `run_dirs` (directories the command reads: writing anything in them may destroy what it reads).
    `inputs` may map what each input is ("the model") to its path, for the message."""
    path = Path(path)
    target = _real(path)
    named = inputs.items() if isinstance(inputs, Mapping) else ((None, given) for given in inputs)
    for label, given in named:
        if given is None:
            continue
        if _same_file(path, Path(given)):
            what = label or f"the command's own input {given}"
            raise InputError(f"{option} {path}: is {what}; choose another file name")
    for given in run_dirs:
        if given is None:
            continue
        run_dir = _real(Path(given))
        if target == run_dir or run_dir in target.parents:
            raise InputError(
                f"{option} {path}: is inside the run directory {given}, which this command reads",
                hint="write it outside the run directory",
            )


def _special_kind(path: Path) -> str | None:
    """What is at `path` when it is not a regular file (nor nothing): 'a directory', 'a FIFO', ..."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    except OSError:
        return None  # unreadable: the write probe below names the reason
    for test, kind in (
        (stat.S_ISREG, None),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _real(path: Path) -> Path:
    """`path` with every symlink and `..` resolved (the parts that do not exist yet kept as written)."""
    return Path(os.path.realpath(path))


def _same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name one file: the same resolved path, or (both existing) the same inode."""
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


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
