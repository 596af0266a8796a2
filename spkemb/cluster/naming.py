"""Canonical cluster numbers and names, so that one partition always prints the same labels.

Clusters are numbered by size, largest first, ties broken by their first member's row; names are
``spk00000``, ``spk00001``, ... (wider when there are more than 100,000 clusters). The names depend
only on the partition and the row order, not on how an algorithm happened to number its clusters,
so a run with the same seed (the same partition) prints the same file.
"""

from __future__ import annotations

import numpy as np

DEFAULT_PREFIX = "spk"


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber ``labels`` 0..K-1 by cluster size (descending), then by first member's row."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse, counts = np.unique(labels, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -counts))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse.ravel()].astype(np.int64)


def label_names(labels: np.ndarray, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """``prefix`` + zero-padded number for each (canonical) label."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if labels.size else 0
    width = max(5, len(str(k - 1)))
    names = [f"{prefix}{i:0{width}d}" for i in range(k)]
    return [names[i] for i in labels.tolist()]
