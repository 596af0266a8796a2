"""The command line's stderr console, its notices and --json output."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

__all__ = ["console", "busy_notice", "print_json"]


class _Console(Console):
    """Rich's stderr console, except that in a log file (stderr not a terminal) lines never wrap:
    rich would wrap them at 80 columns there. Decided at each print, as stderr may be swapped."""

    @property
    def soft_wrap(self) -> bool:
        return not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:  # rich's __init__ sets it; the property decides
        pass


console = _Console(stderr=True)


def busy_notice(threads: int | None = None, option: str | None = "--threads") -> None:
    """One line when this run's compute threads would oversubscribe a busy machine (see
    :mod:`spkemb.utils.system`), naming how to give it fewer: ``option`` (when the command has one) or
    ``OMP_NUM_THREADS``. Under torchrun only rank 0 says it."""
    from spkemb.utils.system import oversubscription

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
