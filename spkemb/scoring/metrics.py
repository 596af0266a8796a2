"""Verification metrics: DET curve, EER, minDCF, actDCF and Cllr.

Conventions (used everywhere in this module):

* ``labels`` are 1 for target trials, 0 for non-target trials; higher scores mean "same speaker".
* A trial is *accepted* at threshold ``t`` when ``score >= t``. So at ``t``,
  ``p_miss(t) = #{target scores < t} / #targets`` and ``p_fa(t) = #{non-target scores >= t} / #non-targets``.
* The DET curve is evaluated at every distinct score plus ``+inf``: it starts at ``(p_miss, p_fa) =
  (0, 1)`` (threshold = the lowest score, everything accepted) and ends at ``(1, 0)`` (threshold
  ``+inf``, everything rejected). Tied scores form one point, as they must: no threshold can split them.
* **EER** is where the DET curve crosses the line ``p_miss = p_fa``, found by linear interpolation
  between the two adjacent DET points that bracket the crossing: with ``d = p_miss - p_fa``,
  ``i`` the first point with ``d[i] >= 0`` and ``a = -d[i-1] / (d[i] - d[i-1])``,
  ``EER = p_miss[i-1] + a * (p_miss[i] - p_miss[i-1])`` (which equals the interpolated ``p_fa``).
  This is exact, reproducible and independent of how the scores are ordered. Its threshold is
  interpolated the same way between the two points' thresholds (the lower one when the upper one
  is ``+inf``).
* **minDCF** is the minimum over the DET points of ``c_miss p_target p_miss + c_fa (1 - p_target) p_fa``,
  normalised by ``min(c_miss p_target, c_fa (1 - p_target))`` (the cost of the best trivial system,
  NIST's convention), so it lies in ``[0, 1]``.
* **actDCF** is the same normalised cost at the Bayes threshold ``log(c_fa (1 - p_target) / (c_miss p_target))``,
  meaningful when the scores are calibrated log-likelihood ratios (natural log).
* **Cllr** (bits) is ``(mean(log2(1 + e^-s)) over targets + mean(log2(1 + e^s)) over non-targets) / 2``,
  again for calibrated natural-log LLRs; 1.0 is the cost of a system that always says LLR = 0.
* **minCllr** is the Cllr after the best monotone recalibration of the scores: pool tied scores,
  fit the target posterior by isotonic regression (PAV, computed as the ROC convex hull, see
  ``_pav``: scipy's and scikit-learn's PAV cost more to import than scoring a million trials),
  turn it into LLRs with the list's own target proportion as the prior (Brummer and du Preez 2006).
  ``Cllr - minCllr`` is the calibration loss.

Everything is vectorised numpy and sorts the scores once, so millions of trials take well under a
second. Empty classes, mismatched lengths, labels other than 0/1 and non-finite scores raise
:class:`~spkemb.errors.InputError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spkemb.errors import InputError
from spkemb.scoring.defaults import DEFAULT_P_TARGETS

__all__ = [
    "DetCurve",
    "det_curve",
    "det_points",
    "compute_eer",
    "compute_min_dcf",
    "compute_act_dcf",
    "compute_cllr",
    "compute_min_cllr",
    "check_scores",
    "summarize",
]


@dataclass(frozen=True)
class DetCurve:
    """Miss and false-alarm rates at ascending thresholds (see the module docstring)."""

    p_miss: np.ndarray
    p_fa: np.ndarray
    thresholds: np.ndarray
    n_target: int
    n_nontarget: int


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1)
    if s.shape != lab.shape:
        raise InputError(f"{s.size} scores but {lab.size} labels")
    if lab.dtype == bool:
        lab = lab.astype(np.int8)
    integer = lab.dtype.kind in "iu"
    if lab.size and not ((lab.min() >= 0 and lab.max() <= 1) if integer else np.isin(lab, (0, 1)).all()):
        raise InputError("labels must be 1 (target) or 0 (non-target)")
    if not np.isfinite(s).all():
        raise InputError(f"{int((~np.isfinite(s)).sum())} scores are not finite (NaN or infinite)")
    lab = lab.astype(bool)
    n_tar = int(lab.sum())
    if n_tar == 0:
        raise InputError("no target trials: EER and DCF need both target and non-target trials")
    if n_tar == lab.size:
        raise InputError("no non-target trials: EER and DCF need both target and non-target trials")
    return s, lab


def check_scores(scores: np.ndarray, labels: np.ndarray) -> None:
    """Raise the InputError that any metric of these scores would raise (before anything is written)."""
    _check(scores, labels)


def _det(s: np.ndarray, lab: np.ndarray) -> DetCurve:
    order = np.argsort(s)  # ties are pooled below, so the order within a tie does not matter
    s = s[order]
    lab = lab[order]
    n = s.size
    n_tar = int(lab.sum())
    n_non = n - n_tar
    # tar_below[k] = number of targets among the k lowest scores (k = 0..n).
    tar_below = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lab, out=tar_below[1:])
    # Start of each run of equal scores, then n for the threshold +inf.
    starts = np.concatenate(([0], np.flatnonzero(s[1:] != s[:-1]) + 1, [n]))
    miss = tar_below[starts]
    fa = n_non - (starts - miss)
    thresholds = np.concatenate((s[starts[:-1]], [np.inf]))
    return DetCurve(miss / n_tar, fa / n_non, thresholds, n_tar, n_non)


def det_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(p_miss, p_fa, thresholds)`` at every distinct score plus ``+inf``, thresholds ascending.

    ``p_miss`` is non-decreasing from 0 to 1 and ``p_fa`` non-increasing from 1 to 0.
    """
    c = _det(*_check(scores, labels))
    return c.p_miss, c.p_fa, c.thresholds


def det_points(scores: np.ndarray, labels: np.ndarray, p_target: float = 0.01) -> tuple[DetCurve, float, int]:
    """The DET curve, its EER (fraction) and the index of its minDCF point at ``p_target``, for plots."""
    _dcf_weights(p_target, 1.0, 1.0)
    c = _det(*_check(scores, labels))
    w_miss, w_fa, norm = _dcf_weights(p_target, 1.0, 1.0)
    return c, _eer(c)[0], int(np.argmin(w_miss * c.p_miss + w_fa * c.p_fa))


def _eer(c: DetCurve) -> tuple[float, float]:
    d = c.p_miss - c.p_fa  # -1 at the first point, +1 at the last, non-decreasing
    i = int(np.argmax(d >= 0))
    d0, d1 = d[i - 1], d[i]
    a = -d0 / (d1 - d0)
    eer = c.p_miss[i - 1] + a * (c.p_miss[i] - c.p_miss[i - 1])
    t0, t1 = c.thresholds[i - 1], c.thresholds[i]
    thr = t0 + a * (t1 - t0) if np.isfinite(t1) else t0
    return float(eer), float(thr)


def _dcf_weights(p_target: float, c_miss: float, c_fa: float) -> tuple[float, float, float]:
    if not 0.0 < p_target < 1.0:
        raise InputError(f"p_target must be strictly between 0 and 1, got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise InputError(f"costs must be positive, got c_miss={c_miss}, c_fa={c_fa}")
    w_miss = c_miss * p_target
    w_fa = c_fa * (1.0 - p_target)
    return w_miss, w_fa, min(w_miss, w_fa)


def _min_dcf(c: DetCurve, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
    w_miss, w_fa, norm = _dcf_weights(p_target, c_miss, c_fa)
    dcf = (w_miss * c.p_miss + w_fa * c.p_fa) / norm
    i = int(np.argmin(dcf))
    return float(dcf[i]), float(c.thresholds[i])


def compute_eer(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Equal error rate as a fraction in [0, 1] and its threshold (definition in the module docstring)."""
    return _eer(_det(*_check(scores, labels)))


def compute_min_dcf(
    scores: np.ndarray, labels: np.ndarray, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Normalised minimum detection cost and the threshold that reaches it."""
    _dcf_weights(p_target, c_miss, c_fa)
    return _min_dcf(_det(*_check(scores, labels)), p_target, c_miss, c_fa)


def compute_act_dcf(
    scores: np.ndarray, labels: np.ndarray, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Normalised actual DCF of calibrated LLR scores at the Bayes threshold, and that threshold."""
    _dcf_weights(p_target, c_miss, c_fa)
    return _act_dcf(*_check(scores, labels), p_target, c_miss, c_fa)


def _act_dcf(s: np.ndarray, lab: np.ndarray, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
    w_miss, w_fa, norm = _dcf_weights(p_target, c_miss, c_fa)
    thr = float(np.log(w_fa / w_miss))
    accept = s >= thr
    p_miss = float(np.mean(~accept[lab]))
    p_fa = float(np.mean(accept[~lab]))
    return (w_miss * p_miss + w_fa * p_fa) / norm, thr


def compute_cllr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Log-likelihood-ratio cost in bits, for scores that are calibrated natural-log LLRs."""
    return _cllr(*_check(scores, labels))


def _cllr(s: np.ndarray, lab: np.ndarray) -> float:
    c_tar = np.mean(np.logaddexp(0.0, -s[lab]))
    c_non = np.mean(np.logaddexp(0.0, s[~lab]))
    return float((c_tar + c_non) / (2.0 * np.log(2.0)))


def _pooled(c: DetCurve) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct score, ascending: number of trials and of targets (read off the DET points)."""
    tar_below = np.rint(c.p_miss * c.n_target).astype(np.int64)
    non_below = c.n_nontarget - np.rint(c.p_fa * c.n_nontarget).astype(np.int64)
    tars = np.diff(tar_below)
    return tars + np.diff(non_below), tars


def _pav(counts: np.ndarray, tars: np.ndarray, passes: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators on the target proportion of the score blocks (ascending scores), as
    the pooled blocks' ``(counts, targets)``: the segments of the greatest convex minorant of the
    cumulative (trials, targets) curve, whose slopes are the PAV posteriors (Fawcett and
    Niculescu-Mizil 2007: PAV = ROC convex hull). Exact integer arithmetic; each vectorised pass
    drops every point on or above the chord of its neighbours (none of those is a hull vertex),
    which a few dozen passes finish on score data; a stack walk finishes any pathological rest."""
    x = np.concatenate(([0], np.cumsum(counts)))
    y = np.concatenate(([0], np.cumsum(tars)))
    idx = np.arange(x.size)
    if passes > 0 and x.size > 2:  # the first pass on slices, without gathers: it keeps few points
        keep = np.ones(x.size, dtype=bool)
        keep[1:-1] = (x[1:-1] - x[:-2]) * (y[2:] - y[:-2]) - (y[1:-1] - y[:-2]) * (x[2:] - x[:-2]) > 0
        idx = idx[keep]
    for _ in range(passes - 1):
        a, b, c = idx[:-2], idx[1:-1], idx[2:]
        keep = np.ones(idx.size, dtype=bool)
        keep[1:-1] = (x[b] - x[a]) * (y[c] - y[a]) - (y[b] - y[a]) * (x[c] - x[a]) > 0
        if keep.all():
            break
        idx = idx[keep]
    else:  # monotone chain over what is left
        hull: list[int] = []
        for i in idx.tolist():
            while (
                len(hull) >= 2
                and (
                    (x[hull[-1]] - x[hull[-2]]) * (y[i] - y[hull[-2]])
                    - (y[hull[-1]] - y[hull[-2]]) * (x[i] - x[hull[-2]])
                )
                <= 0
            ):
                hull.pop()
            hull.append(i)
        idx = np.asarray(hull)
    return np.diff(x[idx]), np.diff(y[idx])


def _min_cllr(counts: np.ndarray, tars: np.ndarray) -> float:
    n_tar, n_non = int(tars.sum()), int(counts.sum() - tars.sum())
    counts, tars = _pav(counts, tars)
    p = tars / counts  # the PAV posterior of each pooled block
    odds = n_tar / n_non  # the prior that posterior carries; LLR = logit(p) - log(odds)
    non = counts - tars
    with np.errstate(divide="ignore", invalid="ignore"):  # p is 0 or 1 only in blocks of one class
        c_tar = np.where(tars > 0, tars * np.log1p((1.0 - p) / p * odds), 0.0).sum()
        c_non = np.where(non > 0, non * np.log1p(p / (1.0 - p) / odds), 0.0).sum()
    return float((c_tar / n_tar + c_non / n_non) / (2.0 * np.log(2.0)))


def compute_min_cllr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Cllr (bits) after the optimal monotone (PAV) calibration of the scores; <= Cllr of any
    monotone transform of them, 0 for separable scores, 1 when no score separates anything."""
    return _min_cllr(*_pooled(_det(*_check(scores, labels))))


def summarize(
    scores: np.ndarray, labels: np.ndarray, p_targets: tuple[float, ...] = DEFAULT_P_TARGETS
) -> dict[str, float | int]:
    """The usual report: ``eer`` (PERCENT), ``eer_threshold``, for each ``p`` of ``p_targets``
    ``mindcf_p{p}`` and ``actdcf_p{p}`` (c_miss = c_fa = 1; actDCF treats the scores as LLRs),
    ``cllr``, ``mincllr`` (bits), ``targets`` and ``nontargets``."""
    for p in p_targets:
        _dcf_weights(p, 1.0, 1.0)
    s, lab = _check(scores, labels)
    c = _det(s, lab)
    eer, thr = _eer(c)
    out: dict[str, float | int] = {"eer": 100.0 * eer, "eer_threshold": thr}
    for p in p_targets:
        out[f"mindcf_p{p:g}"] = _min_dcf(c, p, 1.0, 1.0)[0]
    for p in p_targets:
        out[f"actdcf_p{p:g}"] = _act_dcf(s, lab, p, 1.0, 1.0)[0]
    out["cllr"] = _cllr(s, lab)
    out["mincllr"] = _min_cllr(*_pooled(c))
    out["targets"] = c.n_target
    out["nontargets"] = c.n_nontarget
    return out
