"""Spectral clustering on a p-pruned cosine affinity, with the cluster count from the eigengap.

The affinity follows NME-SC (Park et al., "Auto-tuning spectral clustering for speaker diarization
using normalized maximum eigengap", IEEE SPL 2019): each embedding keeps its ``p`` most cosine-similar
neighbours (binarised), the graph is symmetrised, and the count is the position of the largest gap
among the smallest eigenvalues of its normalised Laplacian. Without a given ``p``, each ``p`` of a
small grid is tried and the one with the smallest ratio ``(p / N) / max_gap`` wins (NME). Memory is
O(N x p): the similarity matrix is computed in row blocks and never held whole.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import laplacian
from scipy.sparse.linalg import eigsh
from sklearn.cluster import SpectralClustering

from spkemb.cluster.stages import StageFn, no_stage

DENSE_UP_TO = 2000  # full eigendecomposition up to this many points, ARPACK above
P_MAX = 200  # largest p tried by the automatic search
P_GRID = 12  # at most this many values of p tried
_BLOCK_ELEMS = 1 << 25  # similarities per row block (128 MiB of float32)


def neighbours(x: np.ndarray, p: int) -> np.ndarray:
    """(N, p) indices of each row's ``p`` most cosine-similar other rows, most similar first."""
    n = len(x)
    out = np.empty((n, p), dtype=np.int64)
    block = max(1, min(n, _BLOCK_ELEMS // max(n, 1)))
    for start in range(0, n, block):
        stop = min(n, start + block)
        sim = x[start:stop] @ x.T
        sim[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not one's own neighbour
        top = np.argpartition(-sim, p - 1, axis=1)[:, :p]
        order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
        out[start:stop] = np.take_along_axis(top, order, axis=1)
    return out


def affinity(nbrs: np.ndarray, p: int) -> sparse.csr_matrix:
    """Binary p-neighbour graph, symmetrised: 1 where both are among each other's p, 0.5 where one is."""
    n = len(nbrs)
    rows = np.repeat(np.arange(n), p)
    b = sparse.csr_matrix((np.ones(n * p), (rows, nbrs[:, :p].ravel())), shape=(n, n))
    return sparse.csr_matrix(0.5 * (b + b.T))


def smallest_eigenvalues(a: sparse.csr_matrix, count: int, seed: int) -> np.ndarray:
    """The ``count`` smallest eigenvalues of the normalised Laplacian of ``a``, ascending."""
    n = a.shape[0]
    lap = laplacian(a, normed=True)
    if n <= DENSE_UP_TO or count >= n - 1:
        return np.linalg.eigvalsh(lap.toarray())[:count]
    # smallest of L = I - M  <=>  largest of the normalised adjacency M, where ARPACK converges fast
    m = sparse.identity(n, format="csr") - lap
    v0 = np.random.default_rng(seed).uniform(-1, 1, n)
    vals = eigsh(m, k=count, which="LA", v0=v0, return_eigenvectors=False)
    return np.sort(1.0 - vals)


def eigengap(vals: np.ndarray, max_clusters: int) -> tuple[int, float]:
    """(count, gap): the count k <= max_clusters after which the eigenvalues jump the most."""
    gaps = np.diff(vals[: max_clusters + 1])
    i = int(np.argmax(gaps))
    return i + 1, float(gaps[i])


def p_grid(n: int, p: int | None) -> list[int]:
    if p is not None:
        return [p]
    top = max(1, min(n - 1, P_MAX, n // 4))
    return sorted({int(v) for v in np.round(np.geomspace(min(2, top), top, P_GRID))})


def spectral(
    x: np.ndarray, n_clusters: int | None, max_clusters: int, p: int | None, seed: int, stage: StageFn = no_stage
) -> tuple[np.ndarray, dict[str, Any]]:
    """Labels and details (``p_neighbours``, ``estimated_clusters``, ``eigengap``)."""
    n = len(x)
    if n <= 2 or n_clusters in (1, n):  # one cluster, or each embedding its own: no graph to cut
        k = n if n_clusters is None else n_clusters
        return (np.arange(n) if k == n else np.zeros(n, dtype=np.int64)), {"p_neighbours": None}
    max_k = min(max_clusters, n - 1)
    grid = p_grid(n, p)
    stage("graph", f"{max(grid)}-neighbour graph")
    nbrs = neighbours(x, max(grid))
    stage("eigengap", f"eigengap over p = {grid[0]}..{grid[-1]}" if len(grid) > 1 else "eigengap")
    best: tuple[float, int, int, float] | None = None
    for pp in grid:
        k_p, gap = eigengap(smallest_eigenvalues(affinity(nbrs, pp), max_k + 1, seed), max_k)
        ratio = (pp / n) / (gap + 1e-10)
        if best is None or ratio < best[0]:
            best = (ratio, pp, k_p, gap)
    assert best is not None
    _, p_best, k_est, gap = best
    k = n_clusters if n_clusters is not None else k_est
    stage("embedding", f"spectral embedding and k-means to {k} clusters")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Graph is not fully connected": expected for clean clusters
        labels = SpectralClustering(
            k, affinity="precomputed", n_init=10, random_state=seed, assign_labels="kmeans"
        ).fit_predict(affinity(nbrs, p_best))
    details = {"p_neighbours": p_best, "estimated_clusters": k_est, "eigengap": round(gap, 6)}
    return np.asarray(labels, dtype=np.int64), details
