"""Scoring back-ends: trial-id resolution, cosine scoring, embedding normalisation, score spaces.

Everything works on row indices into one ``(N, D)`` matrix of embeddings, so a million trials
among ten thousand utterances cost two gathers and a row-wise dot product per chunk, and no Python
loop per trial.

A back-end maps embeddings to a :class:`ScoreSpace`: rows ``z`` and per-row offsets ``bias`` such
that ``score(a, b) = z[a] . z[b] + bias[a] + bias[b]``. Cosine is unit rows with no bias; PLDA's
log-likelihood ratio takes the same form after simultaneous diagonalisation
(:mod:`spkemb.scoring.plda`); :class:`ScoreSpace` lives in :mod:`spkemb.scoring.space`, below both
this module and :mod:`spkemb.scoring.norm`. Trial scores, cohort score matrices and so every score
normalisation (:mod:`spkemb.scoring.norm`) are then the same matrix products for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spkemb.data.trials import Trials
from spkemb.errors import InputError
from spkemb.scoring.norm import DEFAULT_TOP_K, normalize_scores
from spkemb.scoring.space import ScoreSpace, l2_normalize

__all__ = ["NORM_MODES", "Normalizer", "ScoreSpace", "as_norm", "cosine_scores", "l2_normalize", "resolve_ids"]

NORM_MODES = ("mean", "standardize")


def resolve_ids(
    trials: Trials,
    index: Mapping[str, int],
    skip_missing: bool = False,
    source: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Map trial ids to store rows.

    Returns ``(enroll_idx, test_idx, keep_mask, missing)``: ``keep_mask`` (len(trials), bool) marks
    the trials whose two ids are both in ``index``; ``enroll_idx`` and ``test_idx`` (int64) are the
    rows of those kept trials only, in trial order; ``missing`` lists the distinct absent ids in
    order of first appearance. Unless ``skip_missing``, any absent id raises InputError (naming
    ``source``, the store); so does a list in which no trial survives.
    """
    enroll = np.fromiter((index.get(u, -1) for u in trials.enroll), dtype=np.int64, count=len(trials))
    test = np.fromiter((index.get(u, -1) for u in trials.test), dtype=np.int64, count=len(trials))
    keep = (enroll >= 0) & (test >= 0)
    missing: list[str] = []
    if not keep.all():
        seen: set[str] = set()
        for k in np.flatnonzero(~keep):
            for u in (trials.enroll[k], trials.test[k]):
                if u not in index and u not in seen:
                    seen.add(u)
                    missing.append(u)
        if not skip_missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            noun = "trial id is" if len(missing) == 1 else "trial ids are"
            raise InputError(f"{len(missing)} {noun} not in the embedding store: {shown} (use `skip_missing`)", source)
        if not keep.any():
            raise InputError(
                f"none of the {len(trials)} trials has both ids in the embedding store "
                f"({len(missing)} ids missing, e.g. {missing[0]})",
                source,
            )
    return enroll[keep], test[keep], keep, missing


def cosine_scores(
    vectors: np.ndarray, enroll_idx: np.ndarray, test_idx: np.ndarray, normalized: bool = False
) -> np.ndarray:
    """Cosine similarity of rows ``enroll_idx[i]`` and ``test_idx[i]`` of ``vectors``, as float64 (T,).

    Rows are L2-normalised once (skip with ``normalized=True`` when they already are); trials are
    scored in chunks with a row-wise dot product.
    """
    v = np.asarray(vectors, dtype=np.float32) if normalized else l2_normalize(vectors)
    return ScoreSpace(v).pairs(enroll_idx, test_idx)


@dataclass
class Normalizer:
    """Per-dimension normalisation fitted on a cohort, applied to raw embeddings before L2 normalisation.

    ``mean`` subtracts the cohort mean; ``standardize`` also divides by the cohort's per-dimension
    standard deviation (floored, so a constant dimension does not blow up).
    """

    mode: str
    mean: np.ndarray
    std: np.ndarray | None = None

    @classmethod
    def fit(cls, cohort: np.ndarray, mode: str = "mean") -> Normalizer:
        if mode not in NORM_MODES:
            raise InputError(f"unknown normalisation {mode!r} (one of {', '.join(NORM_MODES)})")
        c = np.asarray(cohort, dtype=np.float64)
        if c.ndim != 2 or c.shape[0] < 2:
            raise InputError(f"a normalisation cohort needs at least 2 embeddings, got shape {c.shape}")
        mean = c.mean(axis=0)
        std = None
        if mode == "standardize":
            std = np.maximum(c.std(axis=0), 1e-8)
        return cls(mode, mean.astype(np.float32), None if std is None else std.astype(np.float32))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise InputError(f"embeddings of shape {v.shape} do not match a {self.dim}-d normaliser")
        out = v - self.mean
        if self.std is not None:
            out /= self.std
        return out


def as_norm(
    scores: np.ndarray,
    vectors: np.ndarray,
    enroll_idx: np.ndarray,
    test_idx: np.ndarray,
    cohort: np.ndarray,
    top_k: int = DEFAULT_TOP_K,
) -> np.ndarray:
    """Adaptive symmetric score normalisation (AS-norm 1) of cosine ``scores`` against the raw
    ``cohort`` embeddings; see :func:`spkemb.scoring.norm.normalize_scores`."""
    v = np.asarray(vectors)
    c = np.asarray(cohort)
    if v.ndim != 2 or c.ndim != 2 or v.shape[1] != c.shape[1]:
        raise InputError(f"cohort embeddings have shape {c.shape} but the trial embeddings have shape {v.shape}")
    return normalize_scores(scores, ScoreSpace.cosine(v), enroll_idx, test_idx, ScoreSpace.cosine(c), "asnorm", top_k)
