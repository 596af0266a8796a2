"""spkemb: speaker embeddings from audio folders to scored trials.

From Python: :func:`load_encoder`, :func:`embed` and :func:`verify` (:mod:`spkemb.api`); training
with :class:`spkemb.train.Trainer`, stores with :func:`spkemb.embeddings.store.read_embeddings`
(README, "Use it from Python"). Names are imported on first use, so ``import spkemb`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from spkemb.api import embed, load_encoder, verify

__all__ = ["__version__", "embed", "load_encoder", "verify"]


def __getattr__(name: str) -> Any:
    if name in ("embed", "load_encoder", "verify"):
        from spkemb import api

        return getattr(api, name)
    raise AttributeError(f"module 'spkemb' has no attribute {name!r}")
