"""Scoring: verification metrics (EER, minDCF, actDCF, Cllr, minCllr, DET), back-ends (cosine, PLDA),
score normalisation (Z/T/S/AS-norm), calibration, plots and fast trial/score file I/O.

Modules: ``metrics``, ``backends`` (score spaces, cosine, embedding normalisation), ``norm``,
``plda``, ``calibration``, ``plots`` (matplotlib, imported only when plotting), ``scores_io``
(pyarrow), ``trials`` (scoring a list), ``pipeline`` (what ``spkemb score`` does).
"""

from spkemb.scoring.backends import (
    NORM_MODES,
    Normalizer,
    ScoreSpace,
    as_norm,
    cosine_scores,
    l2_normalize,
    resolve_ids,
)
from spkemb.scoring.metrics import (
    compute_act_dcf,
    compute_cllr,
    compute_eer,
    compute_min_cllr,
    compute_min_dcf,
    det_curve,
    summarize,
)

__all__ = [
    "NORM_MODES",
    "Normalizer",
    "ScoreSpace",
    "as_norm",
    "compute_act_dcf",
    "compute_cllr",
    "compute_eer",
    "compute_min_cllr",
    "compute_min_dcf",
    "cosine_scores",
    "det_curve",
    "l2_normalize",
    "resolve_ids",
    "summarize",
]
