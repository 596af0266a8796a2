"""How a clustering compares with the true speakers (NMI, ARI, purity), and its size statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def purity(true: Sequence[str] | np.ndarray, pred: np.ndarray) -> float:
    """Fraction of items whose cluster's most common true speaker is their own."""
    table = contingency_matrix(true, pred, sparse=True)  # speakers x clusters
    return float(table.max(axis=0).sum() / max(len(pred), 1))


def cluster_metrics(true: Sequence[str] | np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``nmi`` (arithmetic normalisation, sklearn's default), ``ari`` and ``purity``."""
    pred = np.asarray(pred)
    return {
        "nmi": float(normalized_mutual_info_score(true, pred)),
        "ari": float(adjusted_rand_score(true, pred)),
        "purity": purity(true, pred),
    }


def size_stats(labels: np.ndarray) -> dict[str, Any]:
    """Cluster sizes: ``min``, ``median``, ``max``, ``mean`` and the number of ``singletons``."""
    sizes = np.bincount(np.unique(np.asarray(labels), return_inverse=True)[1].ravel())
    if sizes.size == 0:
        return {"min": 0, "median": 0.0, "max": 0, "mean": 0.0, "singletons": 0}
    return {
        "min": int(sizes.min()),
        "median": float(np.median(sizes)),
        "max": int(sizes.max()),
        "mean": round(float(sizes.mean()), 3),
        "singletons": int((sizes == 1).sum()),
    }
