"""Export a store to ``.npy`` (+ ids) or Kaldi binary ``ark``/``scp`` (through kaldiio: Kaldi's
``copy-vector`` and WeSpeaker read it; ``spkemb import-embeddings`` reads it back)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spkemb.data.manifest import atomic_write_text
from spkemb.embeddings.store import EmbeddingSet
from spkemb.errors import InputError
from spkemb.utils.fileio import sibling_path

EXPORT_FORMATS = ("npy", "kaldi")


def export_paths(store_path: str | Path, fmt: str) -> list[Path]:
    """The files that :func:`export_embeddings` writes for ``store_path`` in format ``fmt``."""
    base = Path(store_path).with_suffix("")
    if fmt == "npy":
        return [base.with_suffix(".npy"), Path(f"{base}.ids.txt")]
    if fmt == "kaldi":
        return [base.with_suffix(".ark"), base.with_suffix(".scp")]
    raise InputError(f"`export` {fmt}: choose one of {', '.join(EXPORT_FORMATS)}")


def export_embeddings(emb: EmbeddingSet, store_path: str | Path, fmt: str) -> list[Path]:
    """Write exports beside ``store_path`` (``emb.h5`` -> ``emb.npy`` + ``emb.ids.txt``, or
    ``emb.ark`` + ``emb.scp``); returns the written paths."""
    paths = export_paths(store_path, fmt)
    if fmt == "npy":
        npy, ids = paths
        tmp = sibling_path(npy, ".tmp.npy", prefix=".")
        try:
            np.save(tmp, emb.vectors)
            os.replace(tmp, npy)
        finally:
            tmp.unlink(missing_ok=True)
        atomic_write_text(ids, "".join(f"{u}\n" for u in emb.ids))
        return [npy, ids]
    if fmt == "kaldi":
        from spkemb.embeddings.kaldi_io import write_kaldi_vectors

        ark, scp = paths
        write_kaldi_vectors(emb.ids, emb.vectors, ark, scp, store_path)
        return [ark, scp]
    raise InputError(f"`export` {fmt}: choose one of {', '.join(EXPORT_FORMATS)}")
