"""Checks of what a store holds, so that a forged or damaged file is one line, never a traceback.

:func:`check_contents` is what :func:`spkemb.embeddings.store.read_embeddings` asks of every store it
returns: one id per embedding row (and per speaker, when there are speakers), no id twice, a 2-D
matrix. :func:`is_complete` reads the ``complete`` attribute strictly: only a true boolean (as the
writer sets it) is complete, so a string such as ``"False"`` (truthy in Python) is not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spkemb.errors import InputError


def is_complete(attrs: dict[str, Any]) -> bool:
    """Whether the ``complete`` attribute says the store is finished: ``True`` (a boolean) only."""
    value = attrs.get("complete", False)
    return isinstance(value, bool | np.bool_) and bool(value)


def check_contents(ids: Sequence[str], vectors: np.ndarray, speakers: Sequence[str] | None, path: str | Path) -> None:
    """Raise :class:`InputError` (naming ``path``) unless ids, vectors and speakers agree."""
    if vectors.ndim != 2:
        raise InputError(f"damaged store: the embedding dataset has shape {vectors.shape}, not (rows, dimension)", path)
    if vectors.shape[0] != len(ids):
        raise InputError(f"damaged store: {len(ids)} utt_ids but {vectors.shape[0]} embedding rows", path)
    if speakers is not None and len(speakers) != len(ids):
        raise InputError(f"damaged store: {len(ids)} utt_ids but {len(speakers)} speakers", path)
    if len(set(ids)) != len(ids):
        twice = [u for u, n in Counter(ids).items() if n > 1]
        first = ", ".join(repr(u[:80]) for u in twice[:3])
        raise InputError(f"damaged store: {len(twice)} utt_ids occur more than once (first: {first})", path)


def stored_ids(path: str | Path) -> list[str]:
    """The ``utt_id`` dataset of a store (nothing else is read)."""
    import h5py

    with h5py.File(path, "r") as f:
        return [s.decode() if isinstance(s, bytes) else s for s in f["utt_id"][()]]
