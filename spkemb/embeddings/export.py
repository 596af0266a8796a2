"""Export a store to ``.npy`` (+ ids) or Kaldi text ``ark``/``scp``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spkemb.data.manifest import atomic_write_text
from spkemb.embeddings.store import EmbeddingSet
from spkemb.errors import InputError
from spkemb.fileio import sibling_path

EXPORT_FORMATS = ("npy", "kaldi")


def export_paths(store_path: str | Path, fmt: str) -> list[Path]:
    """The files that :func:`export_embeddings` writes for ``store_path`` in format ``fmt``."""
    base = Path(store_path).with_suffix("")
    if fmt == "npy":
        return [base.with_suffix(".npy"), Path(f"{base}.ids.txt")]
    if fmt == "kaldi":
        return [base.with_suffix(".ark"), base.with_suffix(".scp")]
    raise InputError(f"--export {fmt}: choose one of {', '.join(EXPORT_FORMATS)}")


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
        ark, scp = paths
        lines, scp_lines, offset = [], [], 0
        for u, v in zip(emb.ids, emb.vectors, strict=True):
            if any(c.isspace() for c in u):
                raise InputError(f"utt_id {u!r} contains whitespace; Kaldi ids cannot", store_path)
            head = f"{u} "
            # scp offsets point at the '[' after the key, as Kaldi's text-mode scp expects.
            scp_lines.append(f"{u} {ark.resolve()}:{offset + len(head.encode())}\n")
            line = head + "[ " + " ".join(f"{x:.7g}" for x in v) + " ]\n"
            lines.append(line)
            offset += len(line.encode())
        atomic_write_text(ark, "".join(lines))
        atomic_write_text(scp, "".join(scp_lines))
        return [ark, scp]
    raise InputError(f"--export {fmt}: choose one of {', '.join(EXPORT_FORMATS)}")
