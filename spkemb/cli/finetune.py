"""`spkemb finetune`: placeholder until its issue lands."""

from __future__ import annotations

from spkemb.cli.common import not_yet


def finetune() -> None:
    """Not implemented yet: exits with status 2."""
    raise not_yet("finetune", "finetune and cluster come in a later issue")
