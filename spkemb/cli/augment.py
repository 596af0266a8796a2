"""`spkemb augment`: placeholder until its issue lands."""

from __future__ import annotations

from spkemb.cli.common import not_yet


def augment() -> None:
    """Not implemented yet: exits with status 2."""
    raise not_yet("augment", "issue 3")
