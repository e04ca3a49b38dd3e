"""The errors a user can act on. The CLI prints each as one line (with its hint) instead of a traceback.

Base layer: no imports beyond the standard library, so every stage (inference included) may raise them.
"""

from __future__ import annotations


class FashiondistError(Exception):
    """A known failure that is not the user's input: a failed export check, a non-finite loss. Exit code 1."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class InputError(FashiondistError):
    """Bad input from the user: a malformed file, a wrong model file, a bad option value. Exit code 2."""

    exit_code = 2


class CsvError(InputError):
    """A malformed CSV. The message names the file, the line (1-based, as an editor counts) and the column."""

    def __init__(self, path: str, line: int | None, column: str | None, problem: str):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line
        self.column = column
        self.problem = problem
