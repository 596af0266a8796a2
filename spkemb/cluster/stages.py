"""The stage callback the clustering algorithms announce their stages (and progress notes) through."""

from __future__ import annotations

from collections.abc import Callable

# stage(key, description): a new key starts a stage; the running stage's key again is a progress note.
StageFn = Callable[[str, str], None]


def no_stage(key: str, description: str) -> None:
    pass
