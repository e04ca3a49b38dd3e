"""The two consoles everything prints through: results to stdout, logs and progress to stderr.

Both have rich markup off. Messages carry text a user supplied (paths such as `runs/[test]/cnn`, class and
model names, CSV cells), and with markup on rich reads `[test]` as a style tag and drops it, or fails on
`[/x]` with a MarkupError after the work is done. Styling is given as `Text` objects or `style=` instead.

Base layer: rich only.
"""

from __future__ import annotations

from rich.console import Console

RESULTS_WIDTH = 160  # columns of a table written to a file or pipe (rich would assume 80 and cut them)


def results_console() -> Console:
    """stdout, for tables and results: as wide as a terminal is, and at least 160 columns in a file or pipe."""
    console = Console(soft_wrap=True, markup=False)
    if not console.is_terminal:
        console.width = max(console.width, RESULTS_WIDTH)
    return console


def log_console() -> Console:
    """stderr, for logs and progress bars."""
    return Console(stderr=True, soft_wrap=True, markup=False)
