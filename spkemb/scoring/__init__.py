"""Scoring: verification metrics (EER, minDCF, actDCF, Cllr, minCllr, DET), back-ends (cosine, PLDA),
score normalisation (Z/T/S/AS-norm), calibration, plots and fast trial/score file I/O.

Modules: ``metrics``, ``backends`` (score spaces, cosine, embedding normalisation), ``norm``,
``plda``, ``calibration``, ``plots`` (matplotlib, imported only when plotting), ``scores_io``
(pyarrow), ``trial_scoring`` (scoring a list), ``defaults``, ``pipeline`` (what ``spkemb score`` does).
The names below load their module on first use (``spkemb.scoring.defaults`` stays numpy-free for
the CLI's help).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "NORM_MODES": "backends",
    "Normalizer": "backends",
    "ScoreSpace": "backends",
    "as_norm": "backends",
    "cosine_scores": "backends",
    "l2_normalize": "backends",
    "resolve_ids": "backends",
    "compute_act_dcf": "metrics",
    "compute_cllr": "metrics",
    "compute_eer": "metrics",
    "compute_min_cllr": "metrics",
    "compute_min_dcf": "metrics",
    "det_curve": "metrics",
    "summarize": "metrics",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"spkemb.scoring.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'spkemb.scoring' has no attribute {name!r}")
