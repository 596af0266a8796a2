"""How a subcommand fails: known errors as one clear line on stderr and an exit status."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import typer

from spkemb.cli.console import console
from spkemb.errors import InputError, WorkError

__all__ = ["fail", "guarded", "lost_peer", "not_yet", "cli_message", "flag_text"]

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise (``message`` is plain text: a path or a
    hint such as ``pip install 'spkemb[onnx]'`` keeps its brackets)."""
    from rich.markup import escape

    console.print(f"[bold red]spkemb: error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def cli_message(err: InputError, flags: Mapping[str, str] | None = None) -> str:
    """The error's line with option fields named as the command's ``flags`` (field -> flag): a field
    the core quotes (`` `resume` ``), and a leading ``field:`` of an error not about a file
    (``max_steps: must be at least 1`` -> ``--max-steps: ...``; in a config file's error the key stays)."""
    flags = flags or {}
    message = flag_text(err.message, flags)
    head = re.match(r"([a-z_][\w.]*): ", message)
    if err.path is None and head and head.group(1) in flags:
        message = f"{flags[head.group(1)]}{message[head.end(1) :]}"
    return f"{err.path}: {message}" if err.path else message


def flag_text(text: str, flags: Mapping[str, str]) -> str:
    """``text`` (a core message, note or problem) with each quoted option field (`` `top_k` ``) named
    as the command's flag (``--top-k``); a field the command has no flag for loses its quotes."""
    return re.sub(r"`([\w.]+)`", lambda m: flags.get(m.group(1), m.group(1)), text)


def guarded(func: F) -> F:
    """Turn known errors into one clear line and an exit status (2 bad input, 1 failed work)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError as err:
            from spkemb.cli.params import command_flags

            raise fail(cli_message(err, command_flags(func)), 2) from None
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
        except RuntimeError as err:
            if not lost_peer(err):
                raise
            raise fail(lost_peer_message(err), 1) from None

    return wrapper  # type: ignore[return-value]


# What gloo and NCCL say when another process of the group died (killed, out of memory, its machine gone).
_PEER_WORDS = re.compile(r"connection (reset|closed|refused)|broken pipe|socket timeout|timed out|nccl|gloo", re.I)


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective of a multi-process job (torchrun) that failed because another
    process of the job is gone: each surviving rank then printed a 60-line traceback of its own."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) < 2:
        return False
    dist = sys.modules.get("torch.distributed")
    dist_error = getattr(dist, "DistError", None) if dist is not None else None
    return (isinstance(dist_error, type) and isinstance(err, dist_error)) or bool(_PEER_WORDS.search(str(err)))


def lost_peer_message(err: BaseException) -> str:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)[:160]  # gloo's [source.cc:line] prefix
    rank, size = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    return (
        f"rank {rank} of {size}: another process of this job stopped ({first}); its own output says why. "
        "Checkpoints and finished parts are kept: rerun the same torchrun command to resume (training: with --resume)"
    )


def not_yet(command: str, issue: str) -> typer.Exit:
    """For subcommands whose issue has not landed: say so plainly, exit 2."""
    return fail(f"'spkemb {command}' is not implemented yet ({issue}); nothing was done", 2)
