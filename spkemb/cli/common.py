"""What every subcommand shares: the stderr console, error handling, progress, --json output."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from spkemb.choices import DEVICE_CHOICES, PRECISIONS
from spkemb.errors import InputError, WorkError


class _Console(Console):
    """Rich's stderr console, except that in a log file (stderr not a terminal) lines never wrap:
    rich would wrap them at 80 columns there. Decided at each print, as stderr may be swapped."""

    @property  # type: ignore[override]
    def soft_wrap(self) -> bool:
        return not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:  # rich's __init__ sets it; the property decides
        pass


console = _Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

#: seconds between plain progress lines when stderr is not a terminal; SPKEMB_LOG_INTERVAL overrides
DEFAULT_LOG_INTERVAL = 30.0


def log_interval() -> float:
    """Seconds between plain progress lines in a log (``SPKEMB_LOG_INTERVAL``, default 30)."""
    try:
        return max(0.0, float(os.environ.get("SPKEMB_LOG_INTERVAL", DEFAULT_LOG_INTERVAL)))
    except ValueError:
        return DEFAULT_LOG_INTERVAL


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    console.print(f"[bold red]spkemb: error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def guarded(func: F) -> F:
    """Turn known errors into one clear line and an exit status (2 bad input, 1 failed work)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError as err:
            raise fail(str(err), 2) from None
        except WorkError as err:
            raise fail(str(err), 1) from None
        except BrokenPipeError:  # `spkemb score ... | head`: the reader left; not an error
            sys.stderr.close()
            raise typer.Exit(0) from None
        except OSError as err:  # an unwritable or missing path (2), a full disk (1): still one line
            where = f"{err.filename}: " if err.filename else ""
            usage = isinstance(err, PermissionError | FileNotFoundError | IsADirectoryError | NotADirectoryError)
            raise fail(f"{where}{err.strerror or err}", 2 if usage else 1) from None
        except KeyboardInterrupt:
            raise fail("interrupted; rerun the same command to resume (training: with --resume)", 130) from None

    return wrapper  # type: ignore[return-value]


def not_yet(command: str, issue: str) -> typer.Exit:
    """For subcommands whose issue has not landed: say so plainly, exit 2."""
    return fail(f"'spkemb {command}' is not implemented yet ({issue}); nothing was done", 2)


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


def busy_notice(threads: int | None = None, option: str | None = "--threads") -> None:
    """One line when this run's compute threads would oversubscribe a busy machine (see
    :mod:`spkemb.system`), naming how to give it fewer: ``option`` (when the command has one) or
    ``OMP_NUM_THREADS``. Under torchrun only rank 0 says it."""
    from spkemb.system import oversubscription

    if os.environ.get("RANK", "0") != "0":
        return
    busy = oversubscription(threads)
    if busy is None:
        return
    n = busy.free()
    how = f"{option} {n} or OMP_NUM_THREADS={n}" if option else f"OMP_NUM_THREADS={n}"
    console.print(
        f"[yellow]notice:[/] this machine is busy (load {busy.load:g} on {busy.cores} cores) and this run "
        f"adds {busy.threads} compute threads; jobs that share cores run far slower together (two 2-thread "
        f"jobs on 2 cores: 7x slower). Give each job fewer threads ({how}) so that together they use "
        f"at most {busy.cores}.",
        highlight=False,
        soft_wrap=True,
    )


def print_json(obj: Any) -> None:
    """One JSON object on stdout, for --json."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def method_metavar(kind: str, extra: Sequence[str] = ()) -> str:
    """``[a|b|c]`` of the methods of ``kind``, read from the registry's declarations (no torch import)."""
    from spkemb.discover import method_names

    return "[" + "|".join([*extra, *method_names(kind)]) + "]"


def complete_methods(kind: str, extra: Sequence[str] = ()) -> Callable[[str], list[str]]:
    """Shell completion for a ``--method`` option."""

    def complete(incomplete: str) -> list[str]:
        from spkemb.discover import method_names

        return [n for n in [*extra, *method_names(kind)] if n.startswith(incomplete)]

    return complete


def complete_encoders(incomplete: str) -> list[str]:
    """Shell completion for ``--encoder``."""
    from spkemb.discover import encoder_names

    return [n for n in encoder_names() if n.startswith(incomplete)]


#: ``--precision`` choices, from :mod:`spkemb.choices`
Precision = StrEnum("Precision", {p: p for p in PRECISIONS})  # type: ignore[misc]


def complete_device(incomplete: str) -> list[str]:
    """Completion for ``--device``: auto, cpu, cuda (``cuda:N`` is accepted too)."""
    return [c for c in DEVICE_CHOICES if c.startswith(incomplete)]


def resume_command() -> str:
    """The command line that resumes this run: the same arguments plus ``--resume``."""
    import shlex

    args = [a for a in sys.argv[1:] if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["spkemb", *args])


def run_training(job: Callable[[Any], dict[str, Any]]) -> dict[str, Any] | None:
    """Run a training ``job(reporter)``; leave the process group at the end. Returns the summary on
    rank 0 (``None`` on other ranks). An interrupt that checkpointed exits 130 with the resume command."""
    from spkemb import distributed
    from spkemb.cli.report import CliReporter
    from spkemb.train.trainer import TrainingInterrupted

    finished = False
    try:
        summary = job(CliReporter())
        main_rank = distributed.is_main()
        finished = True
    except TrainingInterrupted as err:
        if distributed.is_main():
            under = "your torchrun command, with " if distributed.world_size() > 1 else ""
            console.print(f"[bold]{err}[/]; resume with: {under}{resume_command()}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    finally:
        distributed.cleanup(wait=finished)
    return summary if main_rank else None
