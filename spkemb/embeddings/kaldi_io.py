"""Kaldi ``ark``/``scp`` embeddings through kaldiio (the field's library, as WeSpeaker uses it).

:func:`write_kaldi_vectors` writes binary float vectors (``xvector.ark`` + ``xvector.scp``, the layout
Kaldi's ``copy-vector``, ``ivector-*`` and WeSpeaker read); :func:`read_kaldi_vectors` reads an ``scp``
(or an ``ark``) made by Kaldi, WeSpeaker or :func:`write_kaldi_vectors`, and :func:`import_embeddings`
turns it into an HDF5 store that ``score`` and ``cluster`` read. Bad input is one
:class:`~spkemb.errors.InputError`; outputs are written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spkemb.errors import InputError
from spkemb.utils.fileio import sibling_path

__all__ = ["write_kaldi_vectors", "read_kaldi_vectors", "import_embeddings", "read_utt2spk"]


def write_kaldi_vectors(ids: Sequence[str], vectors: np.ndarray, ark: Path, scp: Path, where: str | Path) -> None:
    """Write ``vectors`` (rows keyed by ``ids``) as binary Kaldi float vectors into ``ark`` and its ``scp``.

    Both are written to hidden temporary files and renamed into place; the ``scp`` names ``ark`` by its
    absolute path with each vector's byte offset, as Kaldi writes it (``ark,scp:`` wspecifier).
    """
    import kaldiio

    for u in ids:
        if not u or any(c.isspace() for c in u):
            raise InputError(f"utt_id {u!r} is empty or contains whitespace; Kaldi ids cannot", where)
    final = str(Path(ark).resolve())
    tmp_ark, tmp_scp = sibling_path(ark, ".tmp", prefix="."), sibling_path(scp, ".tmp", prefix=".")
    try:
        data = {u: np.ascontiguousarray(v, dtype=np.float32) for u, v in zip(ids, vectors, strict=True)}
        kaldiio.save_ark(str(tmp_ark), data, scp=str(tmp_scp))
        # kaldiio names the ark it wrote (the temporary one): point every line at the final name.
        written = str(tmp_ark)
        lines = []
        for line in tmp_scp.read_text(encoding="utf-8").splitlines():
            key, _, spec = line.partition(" ")
            path, _, offset = spec.rpartition(":")
            if path != written:
                raise RuntimeError(f"kaldiio wrote an unexpected scp line {line!r}")
            lines.append(f"{key} {final}:{offset}\n")
        tmp_scp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp_ark, ark)
        os.replace(tmp_scp, scp)
    finally:
        tmp_ark.unlink(missing_ok=True)
        tmp_scp.unlink(missing_ok=True)


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text or type(err).__name__)[:160]


def read_kaldi_vectors(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Ids and an (N, D) float32 matrix from a Kaldi ``scp`` (or ``ark``) of vectors, in file order.

    Every entry must be a finite 1-D vector (a 1 x D matrix, as some tools write, is taken as its row)
    of one dimension; a missing, truncated or foreign file, a matrix of frames, a repeated key or a
    non-finite value raises :class:`InputError` naming the file and the key.
    """
    import kaldiio

    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", p)
    if p.stat().st_size == 0:
        raise InputError("empty file: no vectors", p)
    ids: list[str] = []
    rows: list[np.ndarray] = []
    key = None
    try:
        if _looks_binary(p):
            items = kaldiio.load_ark(str(p))
        else:
            items = kaldiio.load_scp_sequential(str(p))
        for key, value in items:
            rows.append(_as_vector(np.asarray(value), key, p, len(rows[0]) if rows else None))
            ids.append(key)
    except InputError:
        raise
    except Exception as err:  # kaldiio raises many kinds (ValueError, OSError, struct.error, ...)
        at = f" at {key!r}" if key is not None else ""
        raise InputError(f"cannot read Kaldi vectors{at} ({_short(err)})", p) from None
    if not ids:
        raise InputError("no vectors in this file", p)
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        twice = next(u for u in ids if u in seen or seen.add(u))  # type: ignore[func-returns-value]
        raise InputError(f"key {twice!r} occurs more than once", p)
    return ids, np.stack(rows).astype(np.float32)


def _looks_binary(p: Path) -> bool:
    """An ``ark`` (binary: ``KEY \\0B``) rather than a text ``scp``."""
    with open(p, "rb") as f:
        head = f.read(4096)
    return b"\0B" in head or b"\0" in head


def _as_vector(value: np.ndarray, key: str, p: Path, dim: int | None) -> np.ndarray:
    if value.ndim == 2 and value.shape[0] == 1:
        value = value[0]
    if value.ndim != 1:
        raise InputError(f"{key!r} is a {value.shape} matrix, not a vector (an embedding per utterance)", p)
    if not np.issubdtype(value.dtype, np.floating) or not value.size:
        raise InputError(f"{key!r} is not a float vector ({value.dtype}, {value.size} values)", p)
    if dim is not None and value.shape[0] != dim:
        raise InputError(f"{key!r} has {value.shape[0]} dimensions, the first vector {dim}", p)
    if not np.isfinite(value).all():
        raise InputError(f"{key!r} holds NaN or infinite values", p)
    return value


def read_utt2spk(path: str | Path, ids: Sequence[str]) -> list[str]:
    """The speaker of every id from a Kaldi ``utt2spk`` (``UTT SPK`` lines); an id without one is refused."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such utt2spk file", p)
    table: dict[str, str] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise InputError(f"line {n}: expected 'UTT SPEAKER', got {line[:80]!r}", p)
        table[parts[0]] = parts[1]
    missing = [u for u in ids if u not in table]
    if missing:
        raise InputError(f"{len(missing)} ids have no speaker here (first: {missing[0]!r})", p)
    return [table[u] for u in ids]


def import_embeddings(
    source: str | Path, out: str | Path, utt2spk: str | Path | None = None, overwrite: bool = False
) -> dict[str, object]:
    """Write the vectors of the Kaldi ``scp``/``ark`` ``source`` as an HDF5 store at ``out`` (atomically).

    The store records where it came from (``source``, ``encoder = "kaldi-import"``); with ``utt2spk``
    it holds speakers too. An existing ``out`` is kept unless ``overwrite``.
    """
    from spkemb.embeddings.store import write_embeddings

    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError("already exists; `overwrite` replaces it", out)
    ids, vectors = read_kaldi_vectors(source)
    speakers = read_utt2spk(utt2spk, ids) if utt2spk is not None else None
    attrs = {
        "encoder": "kaldi-import",
        "source": str(Path(source).resolve()),
        "source_format": "kaldi-ark",
        "checkpoint_sha256": "",
    }
    write_embeddings(out, ids, vectors, speakers, attrs)
    return {"output": str(out), "embeddings": len(ids), "dim": int(vectors.shape[1]), "source": str(source)}
