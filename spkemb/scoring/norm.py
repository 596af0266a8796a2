"""Cohort score normalisation: Z-norm, T-norm, S-norm and adaptive S-norm (AS-norm).

For a trial ``(e, t)`` with raw score ``s``, ``mu_x`` and ``sd_x`` are the mean and (population)
standard deviation of the scores of embedding ``x`` against the cohort (all of them, or for AS-norm
only its ``top_k`` highest, Matejka et al. 2017), scored with the same back-end as the trials:

* ``znorm``: ``(s - mu_e) / sd_e`` (enrolment side);
* ``tnorm``: ``(s - mu_t) / sd_t`` (test side);
* ``snorm``: the mean of the two;
* ``asnorm``: the mean of the two with top-k statistics (AS-norm 1).

The statistics are computed once per distinct embedding that a trial uses, with one cohort matrix
product per block of embeddings (shared by both sides), never per trial.
"""

from __future__ import annotations

import numpy as np

from spkemb.errors import InputError
from spkemb.scoring.defaults import DEFAULT_TOP_K
from spkemb.scoring.space import ScoreSpace

__all__ = ["DEFAULT_TOP_K", "SCORE_NORMS", "cohort_stats", "normalize_scores"]

SCORE_NORMS = ("znorm", "tnorm", "snorm", "asnorm")
_EPS = 1e-12
_MATRIX_ELEMS = 1 << 24  # embeddings x cohort scores per block (64 MB of float32)


def cohort_stats(rows: ScoreSpace, cohort: ScoreSpace, top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (float64, std floored at 1e-12) of each row's scores against the cohort, over
    its ``top_k`` highest scores (clipped to the cohort size) or all of them when ``top_k`` is None."""
    n, c = len(rows), len(cohort)
    k = c if top_k is None else min(top_k, c)
    mu = np.empty(n, dtype=np.float64)
    sd = np.empty(n, dtype=np.float64)
    step = max(1, _MATRIX_ELEMS // max(c, 1))
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        s = rows.rows(np.arange(lo, hi)).matrix(cohort)  # (block, C)
        if k < c:
            s = np.partition(s, c - k, axis=1)[:, c - k :]
        s = s.astype(np.float64)
        mu[lo:hi] = s.mean(axis=1)
        sd[lo:hi] = s.std(axis=1)
    return mu, np.maximum(sd, _EPS)


def check_cohort(cohort: ScoreSpace, space: ScoreSpace, source: str | None = None) -> None:
    """A cohort must have at least 2 rows, in the trial embeddings' space."""
    if len(cohort) < 2:
        raise InputError(f"a normalisation cohort needs at least 2 embeddings, got {len(cohort)}", source)
    if cohort.z.shape[1] != space.z.shape[1]:
        raise InputError(
            f"cohort rows are {cohort.z.shape[1]}-d but the trial embeddings map to {space.z.shape[1]}-d", source
        )
    same_bias = cohort.bias is None or bool(np.all(cohort.bias == cohort.bias[:1]))
    if same_bias and bool((cohort.z == cohort.z[:1]).all()):
        raise InputError(
            f"the cohort's {len(cohort)} embeddings are all the same vector: their scores have no spread to "
            "normalise by (every normalised score would be divided by ~0)",
            source,
        )


def normalize_scores(
    scores: np.ndarray,
    space: ScoreSpace,
    enroll_idx: np.ndarray,
    test_idx: np.ndarray,
    cohort: ScoreSpace,
    mode: str,
    top_k: int | None = None,
) -> np.ndarray:
    """Normalise trial ``scores`` (rows ``enroll_idx``/``test_idx`` of ``space``) against ``cohort``.

    ``mode`` is one of :data:`SCORE_NORMS`; ``top_k`` is used by ``asnorm`` only (default :data:`DEFAULT_TOP_K`).
    """
    if mode not in SCORE_NORMS:
        raise InputError(f"unknown score normalisation {mode!r} (one of {', '.join(SCORE_NORMS)})")
    if mode == "asnorm":
        top_k = DEFAULT_TOP_K if top_k is None else top_k
        if top_k < 1:
            raise InputError(f"`top_k` must be at least 1, got {top_k}")
    else:
        top_k = None
    check_cohort(cohort, space)
    e = np.asarray(enroll_idx, dtype=np.int64).reshape(-1)
    t = np.asarray(test_idx, dtype=np.int64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not (e.shape == t.shape == s.shape):
        raise InputError(f"{s.size} scores for {e.size} enrolment and {t.size} test indices")
    sides = {"znorm": (e,), "tnorm": (t,)}.get(mode, (e, t))
    # The distinct rows the trials use, by counting (O(N), where np.unique would sort 2M indices).
    seen = np.zeros(len(space), dtype=bool)
    for side in sides:
        seen[side] = True
    used = np.flatnonzero(seen)
    position = np.empty(len(space), dtype=np.int64)
    position[used] = np.arange(used.size)
    mu, sd = cohort_stats(space.rows(used), cohort, top_k)
    parts = [(s - mu[position[side]]) / sd[position[side]] for side in sides]
    return parts[0] if len(parts) == 1 else 0.5 * (parts[0] + parts[1])
