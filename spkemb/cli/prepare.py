"""`spkemb prepare`: placeholder until its issue lands."""

from __future__ import annotations

from spkemb.cli.common import not_yet


def prepare() -> None:
    """Not implemented yet: exits with status 2."""
    raise not_yet("prepare", "issue 2")
