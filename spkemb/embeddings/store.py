"""The HDF5 embedding store.

Layout: datasets ``utt_id`` (UTF-8 strings), ``embedding`` (N x D float32, chunked), optional
``speaker``; attributes ``format``, ``format_version``, ``complete``, ``encoder``,
``encoder_config`` (JSON), ``checkpoint_sha256``, ``sample_rate``, ``spkemb_version``, ``created``.

A store being written lives at ``OUT.partial`` (``HASH.partial`` beside ``OUT`` when ``OUT``'s
name is too long to take the suffix) with a ``written`` mask, so that an interrupted extraction
resumes where it stopped; a row is marked written only once its data is on disk. Only a finished
store, every row present and finite, is renamed to ``OUT`` (with ``complete = True``), so a file at
``OUT`` is always whole, and a failed run leaves an older ``OUT`` untouched. One process at a time
writes a given ``OUT`` (:mod:`spkemb.utils.locking`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from spkemb import __version__
from spkemb.embeddings.validate import check_contents, is_complete
from spkemb.errors import InputError, WorkError
from spkemb.utils.fileio import fsync_dir, sibling_path
from spkemb.utils.locking import output_lock

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
    """Where the store for ``path`` is written until complete: ``OUT.partial``, or ``HASH.partial``
    beside it when ``OUT``'s name is too long to take the suffix (the same name every run)."""
    return sibling_path(path, ".partial")


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
            raise InputError("no such store (an unfinished extraction is at .partial: rerun extract to finish)", path)
        raise InputError("no such embedding store", path)
    try:
        with h5py.File(p, "r") as f:
            attrs = _attrs_dict(f)
            if attrs.get("format") != FORMAT:
                raise InputError("not a spkemb embedding store (no 'format' attribute)", path)
            if not is_complete(attrs):
                raise InputError("embedding store is incomplete (extraction did not finish)", path)
            ids = [s.decode() if isinstance(s, bytes) else s for s in f["utt_id"][()]]
            vectors = np.asarray(f["embedding"][()], dtype=np.float32)
            speakers = None
            if "speaker" in f:
                speakers = [s.decode() if isinstance(s, bytes) else s for s in f["speaker"][()]]
        check_contents(ids, vectors, speakers, path)
    except InputError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"cannot read embedding store ({str(err).splitlines()[0][:160]})", path) from None
    return EmbeddingSet(ids, vectors, speakers, attrs)


def store_info(path: str | Path) -> tuple[dict[str, Any], int] | None:
    """``(attributes, rows)`` of the complete store at ``path`` (its attributes only are read), or
    ``None`` when there is none: no file, an unfinished or foreign one, or one that cannot be read."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        with h5py.File(p, "r") as f:
            attrs = _attrs_dict(f)
            rows = int(f["utt_id"].shape[0]) if "utt_id" in f else 0
    except (OSError, KeyError, ValueError):
        return None
    if attrs.get("format") != FORMAT or not is_complete(attrs):
        return None
    return attrs, rows


class StoreWriter:
    """Writes a store row by row, resumably.

    ``StoreWriter.open(out, ids, dim, attrs)`` reuses the partial file (:func:`partial_path`) when it
    was started for the same ids and the same ``identity`` attributes (encoder checkpoint hash,
    extraction options and the digest of the manifest's rows), and starts afresh otherwise. Call
    :meth:`write` for finished rows, then :meth:`finish`. The writer holds the output's lock
    (:func:`spkemb.utils.locking.output_lock`) from ``open`` to ``finish`` or ``close``.

    A row is marked written only once its data is on disk: rows are written into the file, and
    every :attr:`FLUSH_SECONDS` the file is flushed and synced, then the rows are marked and the file
    flushed again. The datasets are allocated in full when the file is made, so a disk too small for
    the store fails then, before any work; a write that fails later (a full disk, a quota) closes
    the file without touching it further and raises :class:`WorkError` with one line; the rows
    marked so far are kept for the rerun.
    """

    FLUSH_SECONDS = 5.0

    def __init__(self, f: h5py.File, path: Path, part: Path, resumed: int, lock: contextlib.ExitStack) -> None:
        self._f = f
        self.path = path
        self.part = part
        self.resumed = resumed
        self._lock = lock
        self._written = f["written"]
        self._emb = f["embedding"]
        self._pending: list[np.ndarray] = []
        self._last_flush = time.monotonic()

    @classmethod
    def open(
        cls,
        path: str | Path,
        ids: Sequence[str],
        dim: int,
        attrs: dict[str, Any],
        speakers: Sequence[str] | None = None,
        identity: Sequence[str] = ("checkpoint_sha256", "options", "manifest_sha256"),
        part: Path | None = None,
    ) -> StoreWriter:
        """Resume or start the store for ``path``, written at ``part`` (default: :func:`partial_path`)."""
        out = Path(path)
        part = part or partial_path(out)
        attrs = {k: (json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v) for k, v in attrs.items()}
        lock = contextlib.ExitStack()
        lock.enter_context(output_lock(out, "embedding store"))
        try:
            if part.exists():
                f = _try_resume(part, ids, dim, {k: attrs.get(k) for k in identity})
                if f is not None:
                    return cls(f, out, part, int(np.count_nonzero(f["written"][()])), lock)
                part.unlink()
            f = _create(part, ids, dim, attrs, speakers)
        except BaseException:
            lock.close()
            raise
        return cls(f, out, part, 0, lock)

    def done_mask(self) -> np.ndarray:
        """Rows marked written (durable); rows written since the last flush are not yet marked."""
        return np.asarray(self._written[()], dtype=bool)

    def write(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Store ``vectors`` at row indices ``rows`` (any order); they are marked at the next flush."""
        rows = np.asarray(rows, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise ValueError("refusing to store non-finite embeddings")
        self._io(lambda: _put(self._emb, rows, vectors))
        self._pending.append(rows)
        if time.monotonic() - self._last_flush >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Make the rows written so far durable, then mark them: data, flush + sync, marks, flush."""
        if self._pending:
            rows = np.unique(np.concatenate(self._pending))
            self._io(self._sync)
            self._io(lambda: _put(self._written, rows, np.ones(len(rows), dtype=bool)))
            self._pending.clear()
        self._io(self._f.flush)
        self._last_flush = time.monotonic()

    def _sync(self) -> None:
        self._f.flush()
        try:
            os.fsync(self._f.id.get_vfd_handle())
        except (OSError, ValueError, TypeError, AttributeError):  # a driver without a plain descriptor
            pass

    def _io(self, step: Callable[[], Any]) -> Any:
        """Run one write step; on failure, close the file without further writes and raise WorkError."""
        try:
            return step()
        except (OSError, RuntimeError, ValueError) as err:
            if isinstance(err, ValueError) and not _io_failure(err):
                raise
            _abandon(self._f)
            self._lock.close()
            raise _write_error(err, self.part) from None

    def finish(self, extra_attrs: dict[str, Any] | None = None, drop: Sequence[int] = ()) -> Path:
        """Check every row is written and finite, mark complete, and rename into place atomically.

        Rows in ``drop`` (e.g. audio that could not be read) are left out of the store. A row that is
        neither written nor dropped, or a non-finite one, is a :class:`WorkError` and the store
        stays unfinished.
        """
        self.flush()
        keep = self.done_mask()
        wanted = np.ones(len(keep), dtype=bool)
        wanted[np.asarray(list(drop), dtype=np.int64)] = False
        missing = int((wanted & ~keep).sum())
        if missing:
            self.close()
            raise WorkError(
                f"{self.part}: {missing} rows were never written; the store is left "
                "unfinished (run the same command again to finish it)"
            )
        bad = _nonfinite_rows(self._emb, keep & wanted)
        if len(bad):
            self.close()
            raise WorkError(
                f"{self.part}: {len(bad)} rows are not finite; the store is left "
                "unfinished (remove it and extract again)"
            )
        extra = {k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in (extra_attrs or {}).items()}
        try:
            if wanted.all():
                self._io(lambda: self._complete(extra))
            else:
                self._io(lambda: self._f.attrs.update(extra))
                self.close()
                _copy_rows(self.part, self.path, np.flatnonzero(wanted))
                self.part.unlink(missing_ok=True)
        finally:
            self._lock.close()
        fsync_dir(self.path.parent)
        return self.path

    def _complete(self, extra: dict[str, Any]) -> None:
        del self._f["written"]
        self._f.attrs.update(extra)
        self._f.attrs["complete"] = True
        self._sync()
        self._f.close()
        os.replace(self.part, self.path)

    def discard(self) -> None:
        """Close and remove the partial store (nothing in it is worth resuming)."""
        try:
            _abandon(self._f)
            self.part.unlink(missing_ok=True)
        finally:
            self._lock.close()

    def close(self) -> None:
        """Close (e.g. when interrupted): rows written so far are flushed and marked, for a resume."""
        try:
            if self._f.id.valid:
                self.flush()
                self._f.close()
        finally:
            self._lock.close()


def _put(dset: h5py.Dataset, rows: np.ndarray, values: np.ndarray) -> None:
    order = np.argsort(rows)
    rows, values = rows[order], values[order]
    # h5py fancy indexing needs increasing indices; write contiguous runs as slices (fast path).
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        dset[rows[0] : rows[-1] + 1] = values
    elif len(rows):
        dset[rows] = values


def _create(
    part: Path, ids: Sequence[str], dim: int, attrs: dict[str, Any], speakers: Sequence[str] | None
) -> h5py.File:
    """A new partial store with every dataset allocated now (a too-full disk fails here, before any work)."""
    part.parent.mkdir(parents=True, exist_ok=True)
    _check_room(part, ids, dim, speakers)
    try:
        f = h5py.File(part, "w")
    except OSError as err:
        part.unlink(missing_ok=True)
        raise _write_error(err, part, started=False) from None
    try:
        n = len(ids)
        f.create_dataset("utt_id", data=np.array(list(ids), dtype=object), dtype=_STR)
        if speakers is not None and any(speakers):
            f.create_dataset("speaker", data=np.array(list(speakers), dtype=object), dtype=_STR)
        f.create_dataset(
            "embedding",
            shape=(n, dim),
            dtype="float32",
            chunks=(max(1, min(n, 1024)), dim),
            fillvalue=np.nan,
            dcpl=_early_dcpl(),
        )
        f.create_dataset("written", shape=(n,), dtype=bool, fillvalue=False, dcpl=_early_dcpl())
        f.attrs.update(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "complete": False,
                "spkemb_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        f.attrs.update({k: v for k, v in attrs.items() if v is not None})
        f.flush()
    except (OSError, RuntimeError, ValueError) as err:
        if isinstance(err, ValueError) and not _io_failure(err):
            raise
        _abandon(f)
        part.unlink(missing_ok=True)
        raise _write_error(err, part, started=False) from None
    return f


def _check_room(part: Path, ids: Sequence[str], dim: int, speakers: Sequence[str] | None) -> None:
    """Refuse (:class:`WorkError`) to start a store that the free space of its file system cannot hold.

    HDF5 fails badly when the disk fills while a file is being made (h5py then crashes the process at
    exit: "Can't decrement id ref count", a segfault), so the size is checked before HDF5 is asked:
    the rows, the ids and speakers, and HDF5's own structures, with a margin."""
    try:
        st = os.statvfs(part.parent)
    except (OSError, AttributeError):
        return
    if not st.f_blocks:  # a file system that reports no sizes: nothing to go by
        return
    # (measured: 100 x 60 rows take 42 KB, 1000 x 192 881 KB, 20000 x 192 17.8 MB; this asks 5-30 % more)
    text = sum(len(s.encode("utf-8", "surrogateescape")) + 48 for s in [*ids, *(speakers or [])])
    need = int(1.05 * (len(ids) * (4 * dim + 1) + text)) + 16 * 1024
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise WorkError(
            f"{part}: no space left on the device for the store ({need // 1024} KiB needed, {free // 1024} KiB "
            "free; it is allocated in full when made); make room and run the same command again"
        )


def _early_dcpl() -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def _abandon(f: h5py.File) -> None:
    """Close ``f`` after a failed write without writing to its file again.

    HDF5 flushes its caches when a file is closed; after a failed write that flush fails too, and
    the file would stay open in the library (an error at every later call, a crash at exit). So the
    file's descriptor is first pointed at an anonymous in-memory file that takes the last writes.
    """
    try:
        if not f.id.valid:
            return
        fd = f.id.get_vfd_handle()
        sink = os.memfd_create("spkemb-abandoned") if hasattr(os, "memfd_create") else os.open(os.devnull, os.O_RDWR)
        os.dup2(sink, fd)
        os.close(sink)
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    try:
        f.close()
    except (OSError, RuntimeError):
        pass


def _io_failure(err: BaseException) -> bool:
    """Whether an h5py error is a failed read or write of the file (h5py raises ValueError for some)."""
    return isinstance(err, OSError) or "errno =" in str(err) or "write failed" in str(err)


def _write_error(err: BaseException, part: Path, started: bool = True) -> WorkError:
    text = str(err)
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "errno = 28" in text or "errno = 122" in text:
        problem = (
            "no space left on the device"
            if code != errno.EDQUOT and "errno = 122" not in text
            else "disk quota exceeded"
        )
    else:
        problem = f"cannot write ({text.strip().splitlines()[0][:160] if text.strip() else type(err).__name__})"
    if started:
        return WorkError(
            f"{part}: {problem}; the rows written so far are kept: make room and run the same command again to resume"
        )
    return WorkError(
        f"{part}: {problem} for the store (it is allocated in full when made); make room and run the same command again"
    )


def _nonfinite_rows(dset: h5py.Dataset, rows: np.ndarray, block: int = 65536) -> np.ndarray:
    """Indices of the rows selected by the boolean ``rows`` whose vectors are not all finite."""
    bad: list[np.ndarray] = []
    for first in range(0, dset.shape[0], block):
        sel = rows[first : first + block]
        if sel.any():
            v = dset[first : first + len(sel)]
            bad.append(first + np.flatnonzero(sel & ~np.isfinite(v).all(axis=1)))
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def _copy_rows(part: Path, out: Path, rows: np.ndarray) -> None:
    """Write the complete store ``out`` from the rows ``rows`` of the partial store ``part``."""
    with h5py.File(part, "r") as f:
        attrs = _attrs_dict(f)
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["utt_id"][()][rows]]
        speakers = (
            [s.decode() if isinstance(s, bytes) else s for s in f["speaker"][()][rows]] if "speaker" in f else None
        )
        vectors = np.asarray(f["embedding"][()][rows], dtype=np.float32)
    drop = ("complete", "format", "format_version", "created")
    write_embeddings(out, ids, vectors, speakers, {k: v for k, v in attrs.items() if k not in drop})


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
        if ok:  # a row marked written whose data did not reach the disk reads as NaN: do it again
            bad = _nonfinite_rows(f["embedding"], np.asarray(f["written"][()], dtype=bool))
            if len(bad):
                f["written"][bad] = False
                f.flush()
    except (KeyError, OSError, ValueError, RuntimeError):
        ok = False
    if not ok:
        _abandon(f)
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
    if not np.isfinite(vectors).all():
        raise ValueError("refusing to store non-finite embeddings")
    with output_lock(path, "embedding store"):
        # A store of its own (not the partial of an extraction into the same path, which may be its source).
        part = sibling_path(path, ".whole", prefix=".")
        part.unlink(missing_ok=True)
        w = StoreWriter.open(path, ids, vectors.shape[1], attrs or {}, speakers, identity=(), part=part)
        w.write(np.arange(len(ids)), vectors)
        return w.finish()


def merge_stores(
    inputs: Sequence[str | Path],
    out: str | Path,
    order: Sequence[str] | None = None,
    expect_sha256: str | None = None,
    manifest_sha256: str | None = None,
) -> Path:
    """Merge complete stores (e.g. shards) into one, checked before anything is written.
    ``manifest_sha256`` (with ``order``): the digest of the whole manifest, recorded as one
    extraction of it would record it.

    Shards must come from the same encoder checkpoint (``expect_sha256`` when given) and the same
    extraction options, and must not share ids. ``order`` (the manifest's ids) fixes the row order:
    every id must belong to it, and ids may be absent only where a shard recorded unreadable files.
    """
    sets = [read_embeddings(p) for p in inputs]
    first = sets[0]
    for p, s in zip(inputs, sets, strict=True):
        bad = np.flatnonzero(~np.isfinite(s.vectors).all(axis=1))
        if len(bad):
            raise InputError(f"{len(bad)} embeddings are not finite (first: {', '.join(s.ids[i] for i in bad[:3])})", p)
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
            raise InputError(
                f"the shards do not cover the manifest: {len(missing)} ids missing "
                f"(first: {', '.join(missing[:3])}); extract the missing shards first"
            )
        idx = np.array([pos[u] for u in order if u in pos])
        ids, vectors = [ids[i] for i in idx], vectors[idx]
        speakers = [speakers[i] for i in idx] if speakers is not None else None
    drop = ("complete", "format", "format_version", "created", "shard", "failed", "manifest_sha256")
    attrs = {k: v for k, v in first.attrs.items() if k not in drop}
    attrs["merged_from"] = [str(p) for p in inputs]
    if failed:
        attrs["failed"] = failed
    if manifest_sha256 is not None and order is not None:
        attrs["manifest_sha256"] = manifest_sha256
    return write_embeddings(out, ids, vectors, speakers, attrs)
