"""Average-linkage AHC on a sparse k-nearest-neighbour graph: memory O(N x neighbours), not N^2.

Two clusters can merge only along an edge of the symmetrised cosine kNN graph of the points
(sklearn's ``AgglomerativeClustering`` with ``connectivity``); the linkage distance is still the
average cosine distance over all pairs of their members that the graph links. On 50,000 centroids with
20 neighbours that is 1M edges instead of 1.25 billion distances. Components the graph leaves apart
are joined by sklearn at their closest pair (with a warning, silenced here).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse
from sklearn.cluster import AgglomerativeClustering

from spkemb.cluster.spectral import neighbours

DEFAULT_NEIGHBOURS = 20


def knn_graph(x: np.ndarray, k: int) -> sparse.csr_matrix:
    """Binary symmetric graph linking each row with its ``k`` most cosine-similar rows."""
    n = len(x)
    k = max(1, min(k, n - 1))
    nbrs = neighbours(x, k)
    g = sparse.csr_matrix((np.ones(n * k, dtype=np.float32), (np.repeat(np.arange(n), k), nbrs.ravel())), (n, n))
    return sparse.csr_matrix(g.maximum(g.T))


def sparse_ahc(
    x: np.ndarray, n_clusters: int | None, threshold: float | None, k: int = DEFAULT_NEIGHBOURS
) -> np.ndarray:
    """Labels 0..K-1 of average-linkage AHC (cosine distance) restricted to the kNN graph."""
    n = len(x)
    if n == 1 or n_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    if n_clusters is not None and n_clusters >= n:
        return np.arange(n, dtype=np.int64)
    model = AgglomerativeClustering(
        n_clusters=n_clusters,
        distance_threshold=threshold,
        metric="cosine",
        linkage="average",
        connectivity=knn_graph(x, k),
        compute_full_tree=threshold is not None or "auto",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the number of connected components ... is > 1"
        labels = model.fit_predict(x)
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)
