"""k-means as a few passes of matrix products (torch, on the CPU or CUDA), in memory O(N x D + k x D).

Lloyd's algorithm on length-normalised rows: each point goes to the centroid ``c`` that maximises
``x . c - |c|^2 / 2`` (the nearest in squared Euclidean distance), computed over row batches of at
most :data:`BATCH_ELEMS` scores, so an N x k matrix is never held. Centroids are the members' means.

Many points x clusters (above :data:`FLAT_UP_TO`, e.g. 1.09M x 50,000) take two levels, the coarse
quantiser of an inverted file: k-means to ``G ~ sqrt(k)`` coarse groups, then, inside each group,
k-means to its share of the ``k`` clusters, then :data:`REFINE_PASSES` Lloyd passes in which each point
compares only with the centroids of its :data:`PROBE` nearest coarse groups. A pass then costs
``N x (G + PROBE x k / G) x D`` instead of ``N x k x D`` (about 100 times less at 50,000 clusters).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

NoteFn = Callable[[str], None]
BATCH_ELEMS = 1 << 24  # scores per assignment batch (64 MiB of float32)
FLAT_UP_TO = 2_000_000_000  # N x k up to which one flat k-means runs (100k x 20,000)
MAX_ITER = 30
TOL = 1e-3  # stop when fewer than this fraction of the points changed cluster
KMEANSPP_UP_TO = 256  # k-means++ seeding up to this many clusters (k sequential passes), random above
SEED_ROWS_PER_CLUSTER = 256  # k-means++ seeds from a sample of this many rows per cluster
PROBE = 3  # coarse groups each point searches in the refinement passes
REFINE_PASSES = 3
NOTE_EVERY = 2.0  # seconds between progress notes


def _no_note(text: str) -> None:
    pass


class _Notes:
    """Forwards progress notes at most every :data:`NOTE_EVERY` seconds (the first at once)."""

    def __init__(self, note: NoteFn) -> None:
        self.note, self.last = note, -math.inf

    def __call__(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= NOTE_EVERY:
            self.last = now
            self.note(text)


def assign(x: torch.Tensor, c: torch.Tensor, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, scores): each row's nearest centroid and its ``x . c - |c|^2 / 2``, in row batches."""
    import torch

    half = 0.5 * (c * c).sum(1)
    n, k = len(x), len(c)
    step = batch or max(1, BATCH_ELEMS // max(k, 1))
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    best = torch.empty(n, dtype=x.dtype, device=x.device)
    for s in range(0, n, step):
        scores = x[s : s + step] @ c.T
        scores -= half
        best[s : s + step], labels[s : s + step] = scores.max(1)
    return labels, best


def _means(x: torch.Tensor, labels: torch.Tensor, old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Members' means (an empty cluster keeps its old centroid) and the member counts."""
    import torch

    k = len(old)
    sums = torch.zeros_like(old).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k)
    new = torch.where((counts > 0)[:, None], sums / counts.clamp(min=1)[:, None].to(x.dtype), old)
    return new, counts


def _seed(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ (up to :data:`KMEANSPP_UP_TO` clusters) or k distinct random rows.

    k-means++ runs on a random sample of at most :data:`SEED_ROWS_PER_CLUSTER` x k rows (all rows when
    fewer), greedy (the best of ``2 + ln k`` draws per step, as scikit-learn's), each step's distances one
    matrix product and its draws searches in the cumulative sum. (k sequential steps over all 1.09M rows,
    each drawing with ``torch.multinomial``, took about 9 minutes here; over the sample, seconds.)
    """
    import torch

    n = len(x)
    if k > KMEANSPP_UP_TO:
        return x[torch.randperm(n, generator=gen, device="cpu")[:k].to(x.device)].clone()
    m = min(n, SEED_ROWS_PER_CLUSTER * k)
    pool = x if m == n else x[torch.randperm(n, generator=gen, device="cpu")[:m].to(x.device)]
    sq = (pool * pool).sum(1)

    def dist2(idx: torch.Tensor) -> torch.Tensor:  # (m, len(idx)) squared distances to the rows idx
        return (sq[:, None] + sq[idx][None, :] - 2.0 * (pool @ pool[idx].T)).clamp(min=0)

    tries = 2 + int(math.log(k))  # greedy k-means++ (as scikit-learn): the best of a few draws per step
    chosen = [int(torch.randint(m, (1,), generator=gen))]
    d2 = dist2(torch.tensor(chosen, device=x.device))[:, 0]
    for _ in range(1, k):
        cum = torch.cumsum(d2.double(), 0)
        total = float(cum[-1])
        if total > 0:
            u = torch.rand(tries, generator=gen, dtype=torch.float64).to(cum.device) * total
            cand = torch.searchsorted(cum, u, right=True).clamp(max=m - 1)
        else:
            cand = torch.randint(m, (1,), generator=gen).to(x.device)
        new = torch.minimum(d2[:, None], dist2(cand))
        best = int(new.sum(0).argmin())
        chosen.append(int(cand[best]))
        d2 = new[:, best]
    return pool[torch.tensor(chosen, device=x.device)].clone()


def lloyd(
    x: torch.Tensor,
    k: int,
    gen: torch.Generator,
    max_iter: int = MAX_ITER,
    batch: int | None = None,
    note: Callable[..., None] = _no_note,
    what: str = "k-means",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Flat k-means: (labels, centroids, iterations run)."""
    k = min(k, len(x))
    c = _seed(x, k, gen)
    labels, _ = assign(x, c, batch)
    it = 0
    for it in range(1, max_iter + 1):
        c, _ = _means(x, labels, c)
        new, _ = assign(x, c, batch)
        changed = int((new != labels).sum())
        labels = new
        note(f"{what}: iteration {it}/{max_iter}, {changed} points moved")
        if changed <= TOL * len(x):
            break
    return labels, c, it


def two_level(
    x: torch.Tensor, k: int, gen: torch.Generator, max_iter: int, note: Callable[..., None]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Coarse groups, k-means inside each, then probed refinement passes (see the module docstring)."""
    import torch

    n = len(x)
    g = max(2, min(k, round(math.sqrt(k))))
    coarse_labels, coarse, _ = lloyd(x, g, gen, max_iter=min(max_iter, 20), note=note, what=f"coarse k-means to {g}")
    sizes = torch.bincount(coarse_labels, minlength=g).cpu().numpy()
    # each group's share of the k clusters, at least 1 and at most its size, summing to k
    share = np.maximum(1, np.floor(sizes * (k / n)).astype(np.int64))
    share = np.minimum(share, np.maximum(sizes, 1))
    order = np.argsort(-(sizes * (k / n) - np.floor(sizes * (k / n))))
    i = 0
    while share.sum() < k and i < 10 * g:
        j = order[i % g]
        if share[j] < sizes[j]:
            share[j] += 1
        i += 1
    cents: list[torch.Tensor] = []
    group_of: list[int] = []
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    members_by = torch.argsort(coarse_labels)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    for j in range(g):
        if sizes[j] == 0:
            continue
        members = members_by[int(bounds[j]) : int(bounds[j + 1])]
        sub, c, _ = lloyd(x[members], int(share[j]), gen, max_iter=max_iter)
        labels[members] = sub + len(group_of)
        cents.append(c)
        group_of.extend([j] * len(c))
        note(f"k-means inside coarse group {j + 1}/{g}")
    centroids = torch.cat(cents)
    group = torch.tensor(group_of, device=x.device)
    passes = 0
    for passes in range(1, REFINE_PASSES + 1):
        centroids, _ = _means(x, labels, centroids)
        new = probed_assign(x, centroids, coarse, group, min(PROBE, g), labels)
        changed = int((new != labels).sum())
        labels = new
        note(f"k-means refinement pass {passes}/{REFINE_PASSES}, {changed} points moved")
        if changed <= TOL * n:
            break
    return labels, centroids, {"kmeans_coarse_groups": g, "kmeans_refine_passes": passes}


def probed_assign(
    x: torch.Tensor, c: torch.Tensor, coarse: torch.Tensor, group: torch.Tensor, probe: int, init: torch.Tensor
) -> torch.Tensor:
    """Each row's nearest centroid among those of its ``probe`` nearest coarse groups (``init`` where none)."""
    import torch

    n = len(x)
    g = len(coarse)
    half_coarse = 0.5 * (coarse * coarse).sum(1)
    top = torch.empty(n, probe, dtype=torch.int64, device=x.device)
    step = max(1, BATCH_ELEMS // g)
    for s in range(0, n, step):
        scores = x[s : s + step] @ coarse.T - half_coarse
        top[s : s + step] = scores.topk(probe, dim=1).indices
    # for each probe rank r: the rows whose r-th nearest group is j search group j's centroids
    by_group = [torch.nonzero(group == j).ravel() for j in range(g)]
    labels = init.clone()
    best = torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)
    for r in range(probe):
        order = torch.argsort(top[:, r])
        counts = torch.bincount(top[:, r], minlength=g).cpu().numpy()
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for j in range(g):
            if counts[j] == 0 or len(by_group[j]) == 0:
                continue
            rows = order[int(bounds[j]) : int(bounds[j + 1])]
            cand = by_group[j]
            lab, score = assign(x[rows], c[cand])
            better = score > best[rows]
            best[rows] = torch.where(better, score, best[rows])
            labels[rows] = torch.where(better, cand[lab], labels[rows])
    return labels


def torch_kmeans(
    x: np.ndarray,
    k: int,
    seed: int,
    device: str = "cpu",
    note: NoteFn = _no_note,
    max_iter: int = MAX_ITER,
    batch: int | None = None,
    flat_up_to: int = FLAT_UP_TO,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Labels (N,) in 0..k-1 and the (k, D) float32 centroids; flat, or two levels above ``flat_up_to``."""
    import torch

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    notes = _Notes(note)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
    details: dict[str, Any]
    with torch.no_grad():
        if len(x) * k > flat_up_to and k >= 16:
            labels, c, details = two_level(xt, k, gen, max_iter, notes)
            details = {"kmeans": "torch two-level", **details}
        else:
            labels, c, its = lloyd(xt, k, gen, max_iter, batch, notes)
            details = {"kmeans": "torch", "kmeans_iterations": its}
    details["kmeans_device"] = str(dev)
    return labels.cpu().numpy().astype(np.int64), c.cpu().numpy().astype(np.float32), details
