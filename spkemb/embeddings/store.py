"""The HDF5 embedding store.

Layout: datasets ``utt_id`` (UTF-8 strings), ``embedding`` (N x D float32, chunked), optional
``speaker``; attributes ``format``, ``format_version``, ``complete``, ``encoder``,
``encoder_config`` (JSON), ``checkpoint_sha256``, ``sample_rate``, ``spkemb_version``, ``created``.

A store being written lives at ``OUT.partial`` with a ``written`` mask, so that an interrupted
extraction resumes where it stopped; only a finished store is renamed to ``OUT`` (with
``complete = True``), so a file at ``OUT`` is always whole, and a failed run leaves an older
``OUT`` untouched.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from spkemb import __version__
from spkemb.errors import InputError

FORMAT = "spkemb-embeddings"
FORMAT_VERSION = 1
_STR = h5py.string_dtype(encoding="utf-8")


@dataclass
class EmbeddingSet:
    """Embeddings in memory: ids, an (N, D) float32 matrix, optional speakers and the store's attributes."""

    ids: list[str]
    vectors: np.ndarray
    speakers: list[str] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)


def partial_path(path: str | Path) -> Path:
    return Path(f"{path}.partial")


def _attrs_dict(f: h5py.File) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in f.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.generic):
            v = v.item()
        if k == "encoder_config" and isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        out[k] = v
    return out


def read_embeddings(path: str | Path) -> EmbeddingSet:
    """Read a complete store; a missing, corrupt, foreign or unfinished file raises InputError."""
    p = Path(path)
    if not p.is_file():
        if partial_path(p).is_file():
            raise InputError("no such store (an unfinished extraction is at .partial: rerun extract to finish)",
                             path)
        raise InputError("no such embedding store", path)
    try:
        with h5py.File(p, "r") as f:
            attrs = _attrs_dict(f)
            if attrs.get("format") != FORMAT:
                raise InputError("not a spkemb embedding store (no 'format' attribute)", path)
            if not attrs.get("complete", False):
                raise InputError("embedding store is incomplete (extraction did not finish)", path)
            ids = [s.decode() if isinstance(s, bytes) else s for s in f["utt_id"][()]]
            vectors = np.asarray(f["embedding"][()], dtype=np.float32)
            speakers = None
            if "speaker" in f:
                speakers = [s.decode() if isinstance(s, bytes) else s for s in f["speaker"][()]]
    except InputError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"cannot read embedding store ({str(err).splitlines()[0][:160]})", path) from None
    return EmbeddingSet(ids, vectors, speakers, attrs)


class StoreWriter:
    """Writes a store row by row, resumably.

    ``StoreWriter.open(out, ids, dim, attrs)`` reuses ``OUT.partial`` when it was started for the
    same ids and the same ``identity`` attributes (encoder checkpoint hash and extraction options),
    and starts afresh otherwise. Call :meth:`write` for finished rows, then :meth:`finish`.
    """

    def __init__(self, f: h5py.File, path: Path, resumed: int) -> None:
        self._f = f
        self.path = path
        self.resumed = resumed
        self._written = f["written"]
        self._emb = f["embedding"]
        self._last_flush = time.monotonic()

    @classmethod
    def open(
        cls,
        path: str | Path,
        ids: Sequence[str],
        dim: int,
        attrs: dict[str, Any],
        speakers: Sequence[str] | None = None,
        identity: Sequence[str] = ("checkpoint_sha256", "options"),
    ) -> StoreWriter:
        out = Path(path)
        part = partial_path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        attrs = {k: (json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v) for k, v in attrs.items()}
        if part.exists():
            f = _try_resume(part, ids, dim, {k: attrs.get(k) for k in identity})
            if f is not None:
                return cls(f, out, int(np.count_nonzero(f["written"][()])))
            part.unlink()
        f = h5py.File(part, "w")
        n = len(ids)
        f.create_dataset("utt_id", data=np.array(list(ids), dtype=object), dtype=_STR)
        if speakers is not None and any(speakers):
            f.create_dataset("speaker", data=np.array(list(speakers), dtype=object), dtype=_STR)
        f.create_dataset("embedding", shape=(n, dim), dtype="float32",
                         chunks=(max(1, min(n, 1024)), dim), fillvalue=np.nan)
        f.create_dataset("written", shape=(n,), dtype=bool, fillvalue=False)
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "complete": False,
                        "spkemb_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        f.attrs.update({k: v for k, v in attrs.items() if v is not None})
        f.flush()
        return cls(f, out, 0)

    def done_mask(self) -> np.ndarray:
        return np.asarray(self._written[()], dtype=bool)

    def write(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Store ``vectors`` at row indices ``rows`` (any order) and mark them written."""
        order = np.argsort(rows)
        rows, vectors = np.asarray(rows)[order], np.asarray(vectors, dtype=np.float32)[order]
        # h5py fancy indexing needs increasing indices; write contiguous runs as slices (fast path).
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            self._emb[rows[0]:rows[-1] + 1] = vectors
            self._written[rows[0]:rows[-1] + 1] = True
        else:
            self._emb[rows] = vectors
            self._written[rows] = True
        if time.monotonic() - self._last_flush > 5.0:
            self._f.flush()
            self._last_flush = time.monotonic()

    def finish(self, extra_attrs: dict[str, Any] | None = None) -> Path:
        """Check every row is written, mark complete, and rename into place atomically."""
        mask = self.done_mask()
        if not mask.all():
            missing = int((~mask).sum())
            self.close()
            raise RuntimeError(f"{missing} rows were never written")
        del self._f["written"]
        if extra_attrs:
            self._f.attrs.update({k: (json.dumps(v) if isinstance(v, dict | list) else v)
                                  for k, v in extra_attrs.items()})
        self._f.attrs["complete"] = True
        self._f.flush()
        fd = os.open(self._f.filename, os.O_RDONLY)
        self._f.close()
        os.fsync(fd)
        os.close(fd)
        os.replace(partial_path(self.path), self.path)
        return self.path

    def close(self) -> None:
        if self._f.id.valid:
            self._f.flush()
            self._f.close()


def _try_resume(part: Path, ids: Sequence[str], dim: int, identity: dict[str, Any]) -> h5py.File | None:
    try:
        f = h5py.File(part, "r+")
    except OSError:
        return None
    try:
        ok = (
            f.attrs.get("format") == FORMAT
            and "written" in f
            and f["embedding"].shape == (len(ids), dim)
            and all(_same(f.attrs.get(k), v) for k, v in identity.items())
            and [s.decode() if isinstance(s, bytes) else s for s in f["utt_id"][()]] == list(ids)
        )
    except (KeyError, OSError, ValueError):
        ok = False
    if not ok:
        f.close()
        return None
    return f


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bytes):
        a = a.decode()
    if isinstance(a, np.generic):
        a = a.item()
    return a == b


def write_embeddings(
    path: str | Path,
    ids: Sequence[str],
    vectors: np.ndarray,
    speakers: Sequence[str] | None = None,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write a whole store at once (atomically)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(ids):
        raise ValueError(f"vectors must be (len(ids), D), got {vectors.shape} for {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise InputError("duplicate utt_id in embeddings", path)
    part = partial_path(path)
    part.unlink(missing_ok=True)
    w = StoreWriter.open(path, ids, vectors.shape[1], attrs or {}, speakers, identity=())
    w.write(np.arange(len(ids)), vectors)
    return w.finish()


def merge_stores(
    inputs: Sequence[str | Path],
    out: str | Path,
    order: Sequence[str] | None = None,
    expect_sha256: str | None = None,
) -> Path:
    """Merge complete stores (e.g. shards) into one, checked before anything is written.

    Shards must come from the same encoder checkpoint (``expect_sha256`` when given) and the same
    extraction options, and must not share ids. ``order`` (the manifest's ids) fixes the row order:
    every id must belong to it, and ids may be absent only where a shard recorded unreadable files.
    """
    sets = [read_embeddings(p) for p in inputs]
    first = sets[0]
    for p, s in zip(inputs, sets, strict=True):
        sha = s.attrs.get("checkpoint_sha256")
        if expect_sha256 is not None and sha != expect_sha256:
            raise InputError("made with another encoder than the one given (checkpoint SHA-256 differs)", p)
        if sha != first.attrs.get("checkpoint_sha256"):
            raise InputError("made with a different encoder checkpoint than the first shard", p)
        if s.attrs.get("options") != first.attrs.get("options"):
            raise InputError(f"extracted with other options ({s.attrs.get('options')}) than the first shard", p)
        if s.vectors.shape[1] != first.vectors.shape[1]:
            raise InputError(f"embedding dimension {s.vectors.shape[1]} differs from {first.vectors.shape[1]}", p)
    ids = [u for s in sets for u in s.ids]
    vectors = np.concatenate([s.vectors for s in sets])
    has_spk = all(s.speakers is not None for s in sets)
    speakers = [v for s in sets for v in (s.speakers or [])] if has_spk else None
    pos = {u: i for i, u in enumerate(ids)}
    if len(pos) != len(ids):
        raise InputError("the stores share utt_ids; shards must be disjoint", inputs[0])
    failed = sum(int(s.attrs.get("failed", 0)) for s in sets)
    if order is not None:
        known = set(order)
        stray = [u for u in ids if u not in known]
        if stray:
            raise InputError(f"{len(stray)} ids are not in the manifest (first: {', '.join(stray[:3])})", inputs[0])
        missing = [u for u in order if u not in pos]
        if len(missing) > failed:
            raise InputError(f"the shards do not cover the manifest: {len(missing)} ids missing "
                             f"(first: {', '.join(missing[:3])}); extract the missing shards first")
        idx = np.array([pos[u] for u in order if u in pos])
        ids, vectors = [ids[i] for i in idx], vectors[idx]
        speakers = [speakers[i] for i in idx] if speakers is not None else None
    drop = ("complete", "format", "format_version", "created", "shard", "failed")
    attrs = {k: v for k, v in first.attrs.items() if k not in drop}
    attrs["merged_from"] = [str(p) for p in inputs]
    if failed:
        attrs["failed"] = failed
    return write_embeddings(out, ids, vectors, speakers, attrs)
