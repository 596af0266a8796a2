"""What every subcommand shares: the stderr console, error handling, progress bars, --json output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from spkemb.choices import DEVICE_CHOICES, PRECISIONS
from spkemb.errors import InputError, WorkError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


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


def progress(transient: bool = False, disable: bool = False) -> Progress:
    """A rich progress bar on stderr (auto-disabled when stderr is not a terminal? no: rich handles it)."""
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

    try:
        summary = job(CliReporter())
        main_rank = distributed.is_main()
    except TrainingInterrupted as err:
        if distributed.is_main():
            under = "your torchrun command, with " if distributed.world_size() > 1 else ""
            console.print(f"[bold]{err}[/]; resume with: {under}{resume_command()}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    finally:
        distributed.cleanup()
    return summary if main_rank else None
