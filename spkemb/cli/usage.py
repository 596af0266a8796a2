"""How the app talks about its own usage: one-line usage errors and uniform help.

Typer builds the click commands; :class:`SpkembGroup` (the app's ``cls``) and :class:`SpkembCommand`
(each subcommand's ``cls``) adjust them:

* a wrong option or argument prints one line, ``spkemb score: no such option --foo; see spkemb
  score --help``, and exits 2, instead of Click's usage block and boxed panel;
* help shows an upper-case METAVAR for every value, never Typer's Python types (``<int>``,
  ``<list[Path]>``, ``--json <bool>``): a parameter declared without one gets one from its type
  (choices as ``[a|b|c]``, numbers as ``N`` or ``NUM``, paths as ``PATH``, text as ``TEXT``), a flag
  none; arguments show as ``NAME`` (``[NAME]`` when optional, ``NAME...`` when repeated) as in
  Unix usage lines, not Typer's ``{NAME}``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from difflib import SequenceMatcher
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

from typer import _click
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from typer.exceptions import Abort

__all__ = ["SpkembGroup", "SpkembCommand", "usage_line"]


def usage_line(err: _click.exceptions.UsageError) -> str:
    """The one line for a usage error: ``COMMAND: problem; see COMMAND --help``."""
    ctx = err.ctx
    where = ctx.command_path if ctx is not None else "spkemb"
    if isinstance(err, _click.exceptions.NoSuchOption):
        message = f"no such option {err.option_name}"
        close = [p for p in err.possibilities or () if SequenceMatcher(None, err.option_name, p).ratio() >= 0.8]
        if close:  # a typo (--precison); click's own list also offers unrelated names
            message += f" (did you mean {' or '.join(sorted(close))}?)"
    else:
        message = " ".join(err.format_message().split()).rstrip(".").replace(": Value error, ", ": ")
        message = message[:1].lower() + message[1:]
    return f"{where}: {message}; see {where} --help"


class SpkembGroup(TyperGroup):
    """The ``spkemb`` group: usage errors as one line, tidy help (see the module docstring)."""

    def get_params(self, ctx: _click.Context) -> list[_click.Parameter]:
        params = super().get_params(ctx)  # (with --help and the completion options, added late)
        tidy_params(params)
        return params

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _click.exceptions.NoArgsIsHelpError:  # `spkemb` alone: the help is already printed
            sys.exit(2)
        except _click.exceptions.UsageError as err:
            print(usage_line(err), file=sys.stderr, flush=True)
            sys.exit(2)
        except _click.exceptions.ClickException as err:
            print(f"spkemb: error: {err.format_message()}", file=sys.stderr, flush=True)
            sys.exit(err.exit_code)
        except Abort:
            print("spkemb: aborted", file=sys.stderr, flush=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)  # an Exit's code comes back as the return value


class _Argument(TyperArgument):
    """An argument shown by its METAVAR alone (Typer adds ``<type>`` after it)."""

    def display_type_rich(self, ctx: _click.Context) -> str | None:
        return None

    def get_usage_pieces(self, ctx: _click.Context) -> list[str]:
        name = self.display_name_raw
        if self.nargs != 1:
            name += "..."
        return [name if self.required else f"[{name}]"]


def _choices(param: Any) -> list[str] | None:
    desc = getattr(param, "type_descriptor", None)
    if desc is None or not desc.is_choice:
        return None
    return [str(c.value if isinstance(c, Enum) else c) for c in desc.choices or ()]


def _type_metavar(annotation: Any) -> str:
    """A placeholder for a value of ``annotation`` (``list[X]``: that of ``X``)."""
    if get_origin(annotation) is list:
        return _type_metavar(get_args(annotation)[0])
    if annotation is int:
        return "N"
    if annotation is float:
        return "NUM"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "PATH"
    return "TEXT"


def tidy_params(params: Sequence[_click.Parameter]) -> None:
    """Give every parameter an upper-case metavar (see the module docstring)."""
    for param in params:
        if isinstance(param, TyperArgument):
            param.__class__ = _Argument  # same fields; only how it is displayed differs
            meta = param.metavar or (param.name or "").upper()
            param.metavar = meta[1:-1] if meta.startswith("[") and meta.endswith("]") else meta
        elif isinstance(param, TyperOption):
            if param.is_flag:
                param.metavar = ""
            elif param.metavar is None:
                choices = _choices(param)
                param.metavar = (
                    "[" + "|".join(choices) + "]"
                    if choices is not None
                    else _type_metavar(param.type_descriptor.annotation)
                )


class SpkembCommand(TyperCommand):
    """A subcommand whose help is tidied by :func:`tidy_params`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tidy_params(self.params)

    def get_params(self, ctx: _click.Context) -> list[_click.Parameter]:
        params = super().get_params(ctx)  # (with --help, made on first use)
        tidy_params(params)
        return params

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _click.exceptions.UsageError as err:
            if err.ctx is None:  # click's parser raises some (a missing option value) without one
                err.ctx = ctx  # so that the line names this command, not `spkemb`
            raise
