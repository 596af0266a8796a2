"""Progress on stderr: a rich bar on a terminal, plain lines at a steady interval in a log file."""

from __future__ import annotations

import os
import time
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from spkemb.cli.console import console

__all__ = ["DEFAULT_LOG_INTERVAL", "LogProgress", "log_interval", "progress", "progress_line"]

#: seconds between plain progress lines when stderr is not a terminal; SPKEMB_LOG_INTERVAL overrides
DEFAULT_LOG_INTERVAL = 30.0


def log_interval() -> float:
    """Seconds between plain progress lines in a log (``SPKEMB_LOG_INTERVAL``, default 30)."""
    try:
        return max(0.0, float(os.environ.get("SPKEMB_LOG_INTERVAL", DEFAULT_LOG_INTERVAL)))
    except ValueError:
        return DEFAULT_LOG_INTERVAL


def progress(transient: bool = False, disable: bool = False) -> Progress | LogProgress:
    """Progress on stderr: a rich bar on a terminal; in a log file (nohup, batch jobs, CI), where
    rich would print nothing until the end, a plain line every :func:`log_interval` seconds."""
    if not console.is_terminal:
        return LogProgress(disable=disable)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable,
    )


class _Task:
    def __init__(self, description: str, total: float | None, completed: float, info: str) -> None:
        self.description, self.total, self.completed, self.info = description, total, completed, info
        self.t0 = time.monotonic()
        self.start_done = completed
        self.printed: tuple[float, float | None] | None = None  # (completed, total) of the last line


class LogProgress:
    """The part of :class:`rich.progress.Progress` the commands use, as plain lines for a log:
    ``extract: 40/100 (40%)  3.2/s  elapsed 0.2 min  eta 0.3 min  0.01/0.03 h``, at most one every
    ``interval`` seconds, and the final state when it stops (a job done within the first interval
    prints none: its summary line says it all). The style is that of training's lines
    (:class:`spkemb.cli.report.CliReporter`)."""

    def __init__(self, interval: float | None = None, disable: bool = False) -> None:
        self.interval = log_interval() if interval is None else interval
        self.disable = disable
        self.tasks: list[_Task] = []
        self.last_line = time.monotonic()

    def __enter__(self) -> LogProgress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """(Nothing to draw.)"""

    def stop(self) -> None:
        """Print the final state of each task that printed a line, if that line did not show it."""
        for task in self.tasks:
            if task.printed is not None and task.printed != (task.completed, task.total):
                self._print(task)

    def add_task(
        self, description: str, total: float | None = None, completed: float = 0, info: str = "", **_: Any
    ) -> TaskID:
        self.tasks.append(_Task(description, total, completed, info))
        return TaskID(len(self.tasks) - 1)

    def update(
        self,
        task_id: TaskID,
        *,
        advance: float | None = None,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
        info: str | None = None,
        **_: Any,
    ) -> None:
        task = self.tasks[task_id]
        task.completed = completed if completed is not None else task.completed + (advance or 0)
        task.total = total if total is not None else task.total
        task.description = description if description is not None else task.description
        task.info = info if info is not None else task.info
        if time.monotonic() - self.last_line >= self.interval:
            self._print(task)

    def _print(self, task: _Task) -> None:
        self.last_line = time.monotonic()
        task.printed = (task.completed, task.total)
        if not self.disable:
            console.print(
                progress_line(
                    task.description,
                    task.completed,
                    task.total,
                    task.info,
                    self.last_line - task.t0,
                    task.completed - task.start_done,
                ),
                highlight=False,
                markup=False,
            )


def progress_line(what: str, done: float, total: float | None, info: str, elapsed: float, since: float) -> str:
    """``what: done/total (pct)  rate/s  elapsed X min  eta Y min  info``; ``since`` items were done
    in the ``elapsed`` seconds (a resumed job starts part done)."""
    line = f"{what}: {done:.0f}" + (f"/{total:.0f} ({100 * done / total:.0f}%)" if total else "")
    if elapsed > 0 and since > 0:
        rate = since / elapsed
        line += f"  {rate:.{1 if rate < 100 else 0}f}/s  elapsed {elapsed / 60:.1f} min"
        if total:
            line += f"  eta {max(0.0, total - done) / rate / 60:.1f} min"
    return line + (f"  {info}" if info else "")
