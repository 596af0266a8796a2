"""Checks the CLI tests share."""

from __future__ import annotations

from typer.testing import Result


def one_line_error(r: Result) -> str:
    """A refused command: exit 2 and no traceback; returns its output for the message's checks."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    return r.output
