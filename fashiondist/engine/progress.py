"""What a training run shows: a rich progress bar on the main process only, one summary line per epoch.

Quiet mode (for log files) keeps the summary lines and drops the bar. Everything goes to stderr; stdout is
for results.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fashiondist.consoles import log_console


class TrainProgress:
    def __init__(self, enabled: bool, quiet: bool, console: Console | None = None):
        self.enabled = enabled
        self.console = console or log_console()
        self._progress: Progress | None = None
        if enabled and not quiet:
            self._progress = Progress(
                TextColumn("{task.description}", style="bold", markup=False),  # the description names a run
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}", markup=False),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
        self._task = None

    def __enter__(self) -> TrainProgress:
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress:
            self._progress.stop()

    def start_epoch(self, description: str, total: int, done: int = 0) -> None:
        if self._progress:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(description, total=total, completed=done, stats="")

    def update(self, completed: int, loss: float, accuracy: float, images_per_s: float) -> None:
        if self._progress and self._task is not None:
            stats = f"loss {loss:.4f}  acc {accuracy:.4f}  {images_per_s:,.0f} img/s"
            self._progress.update(self._task, completed=completed, stats=stats)

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False, soft_wrap=True)
