"""Scoring: verification metrics (EER, minDCF, actDCF, Cllr, DET) and back-ends (cosine, cohort
normalisation, AS-norm)."""

from spkemb.scoring.backends import NORM_MODES, Normalizer, as_norm, cosine_scores, l2_normalize, resolve_ids
from spkemb.scoring.metrics import (
    compute_act_dcf,
    compute_cllr,
    compute_eer,
    compute_min_dcf,
    det_curve,
    summarize,
)

__all__ = [
    "NORM_MODES",
    "Normalizer",
    "as_norm",
    "compute_act_dcf",
    "compute_cllr",
    "compute_eer",
    "compute_min_dcf",
    "cosine_scores",
    "det_curve",
    "l2_normalize",
    "resolve_ids",
    "summarize",
]
