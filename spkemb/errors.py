"""Errors that the CLI turns into one clear line on stderr and exit status 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input or bad usage: a file that cannot be read, a malformed line, an unknown name.

    ``str(err)`` is the one line shown to the user: ``PATH: problem``.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class WorkError(Exception):
    """The work itself failed (exit status 1), e.g. training diverged."""
