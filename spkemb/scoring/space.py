"""Score spaces: rows ``z`` and offsets ``bias`` with ``score(a, b) = z[a] . z[b] + bias[a] + bias[b]``.

The piece that the back-ends (:mod:`spkemb.scoring.backends`, :mod:`spkemb.scoring.plda`) produce and
score normalisation (:mod:`spkemb.scoring.norm`) consumes, so neither imports the other for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from spkemb.errors import InputError

__all__ = ["ScoreSpace", "l2_normalize"]

_EPS = 1e-12
# Trials (or cohort rows) per chunk: bounds the temporary (chunk, D) / (chunk, C) matrices.
_TRIAL_CHUNK = 2048  # small enough that both gathered blocks stay in cache (~4x faster than 64k)
_PARALLEL_TRIALS = 1 << 18  # from here on, score on every core


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero, so its cosine scores are 0."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise InputError(f"expected an (N, D) matrix of embeddings, got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, _EPS)


@dataclass
class ScoreSpace:
    """Rows ``z`` (N, K) float32 and optional per-row offsets ``bias`` (N,) float64 with
    ``score(a, b) = z[a] . z[b] + bias[a] + bias[b]``."""

    z: np.ndarray
    bias: np.ndarray | None = None

    @classmethod
    def cosine(cls, vectors: np.ndarray) -> ScoreSpace:
        return cls(l2_normalize(vectors))

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def rows(self, idx: np.ndarray) -> ScoreSpace:
        return ScoreSpace(self.z[idx], None if self.bias is None else self.bias[idx])

    def pairs(self, enroll_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
        """Scores of trials ``(enroll_idx[i], test_idx[i])``, float64, in chunks of row-wise dot products."""
        e = np.asarray(enroll_idx, dtype=np.int64).reshape(-1)
        t = np.asarray(test_idx, dtype=np.int64).reshape(-1)
        if e.shape != t.shape:
            raise InputError(f"{e.size} enrolment indices but {t.size} test indices")
        out = np.empty(e.size, dtype=np.float64)

        def run(lo: int, hi: int) -> None:
            for a in range(lo, hi, _TRIAL_CHUNK):
                b = min(a + _TRIAL_CHUNK, hi)
                out[a:b] = np.einsum("ij,ij->i", self.z[e[a:b]], self.z[t[a:b]])

        threads = min(len(os.sched_getaffinity(0)), 8) if hasattr(os, "sched_getaffinity") else 1
        if e.size < _PARALLEL_TRIALS or threads < 2:
            run(0, e.size)
        else:  # gathers and einsum release the GIL: one slice of the trials per core
            from concurrent.futures import ThreadPoolExecutor

            bounds = np.linspace(0, e.size, threads + 1).astype(int)
            with ThreadPoolExecutor(threads) as pool:
                jobs = [pool.submit(run, int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
                for job in jobs:
                    job.result()
        if self.bias is not None:
            out += self.bias[e] + self.bias[t]
        return out

    def matrix(self, other: ScoreSpace) -> np.ndarray:
        """All scores of this space's rows against ``other``'s: one matrix product, (N, M) float32."""
        s = self.z @ other.z.T
        if self.bias is not None:
            s += self.bias[:, None].astype(np.float32)
        if other.bias is not None:
            s += other.bias[None, :].astype(np.float32)
        return s
