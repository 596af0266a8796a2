"""What every subcommand shares: the stderr console, error handling, progress bars, --json output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
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
            raise fail("interrupted; run the same command again to resume", 130) from None

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
