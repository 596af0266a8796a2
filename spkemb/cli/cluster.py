"""`spkemb cluster`: placeholder until its issue lands."""

from __future__ import annotations

from spkemb.cli.common import not_yet


def cluster() -> None:
    """Not implemented yet: exits with status 2."""
    raise not_yet("cluster", "finetune and cluster come in a later issue")
