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

Everything is vectorised numpy and sorts the scores once, so millions of trials take well under a
second. Empty classes, mismatched lengths, labels other than 0/1 and non-finite scores raise
:class:`~spkemb.errors.InputError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spkemb.errors import InputError

__all__ = [
    "DetCurve",
    "det_curve",
    "compute_eer",
    "compute_min_dcf",
    "compute_act_dcf",
    "compute_cllr",
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
    if lab.size and not np.isin(lab, (0, 1)).all():
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


def _det(s: np.ndarray, lab: np.ndarray) -> DetCurve:
    order = np.argsort(s, kind="stable")
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
    w_miss, w_fa, norm = _dcf_weights(p_target, c_miss, c_fa)
    s, lab = _check(scores, labels)
    thr = float(np.log(w_fa / w_miss))
    accept = s >= thr
    p_miss = float(np.mean(~accept[lab]))
    p_fa = float(np.mean(accept[~lab]))
    return (w_miss * p_miss + w_fa * p_fa) / norm, thr


def compute_cllr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Log-likelihood-ratio cost in bits, for scores that are calibrated natural-log LLRs."""
    s, lab = _check(scores, labels)
    c_tar = np.mean(np.logaddexp(0.0, -s[lab]))
    c_non = np.mean(np.logaddexp(0.0, s[~lab]))
    return float((c_tar + c_non) / (2.0 * np.log(2.0)))


def summarize(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """The usual report from one sort: ``eer`` (PERCENT), ``eer_threshold``, ``mindcf_p0.01``,
    ``mindcf_p0.05`` (c_miss = c_fa = 1), ``targets`` and ``nontargets``."""
    c = _det(*_check(scores, labels))
    eer, thr = _eer(c)
    return {
        "eer": 100.0 * eer,
        "eer_threshold": thr,
        "mindcf_p0.01": _min_dcf(c, 0.01, 1.0, 1.0)[0],
        "mindcf_p0.05": _min_dcf(c, 0.05, 1.0, 1.0)[0],
        "targets": c.n_target,
        "nontargets": c.n_nontarget,
    }
