"""Cluster embeddings: check the vectors, run a method, number the clusters, compare with the speakers."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from spkemb.cluster.algorithms import ahc, kmeans, two_stage
from spkemb.cluster.metrics import cluster_metrics, size_stats
from spkemb.cluster.naming import DEFAULT_PREFIX, canonical_labels, label_names
from spkemb.cluster.options import ClusterOptions
from spkemb.cluster.spectral import spectral
from spkemb.data.labels import format_labels
from spkemb.embeddings.store import EmbeddingSet
from spkemb.errors import InputError
from spkemb.scoring.backends import Normalizer

# (stage description, stages started so far, stages in all); called as each stage starts, and once at the end.
ProgressFn = Callable[[str, int, int], None]
_STAGES = {"kmeans": 1, "ahc": 1, "two-stage": 2, "spectral": 3}


@dataclass
class Clustering:
    """Canonical labels (0 = the largest cluster), the options as run, and what the method reported."""

    labels: np.ndarray
    options: ClusterOptions
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0


class _Stages:
    """Counts and times the stages an algorithm announces, and forwards them to a progress callback."""

    def __init__(self, total: int, on_progress: ProgressFn | None) -> None:
        self.total, self.on_progress = total, on_progress
        self.seconds: dict[str, float] = {}
        self._name: str | None = None
        self._t = time.perf_counter()

    def __call__(self, key: str, description: str) -> None:
        if key == self._name:  # a note within the running stage
            if self.on_progress is not None:
                self.on_progress(description, len(self.seconds), max(self.total, len(self.seconds) + 1))
            return
        self._close()
        self._name = key
        if self.on_progress is not None:
            self.on_progress(description, len(self.seconds), max(self.total, len(self.seconds) + 1))

    def _close(self) -> None:
        now = time.perf_counter()
        if self._name is not None:
            self.seconds[self._name] = round(now - self._t, 3)
        self._t = now

    def finish(self) -> dict[str, float]:
        self._close()
        self._name = None
        if self.on_progress is not None:
            self.on_progress("done", len(self.seconds), len(self.seconds))
        return self.seconds


def unit_rows(vectors: np.ndarray, ids: Sequence[str] | None = None, source: str | None = None) -> np.ndarray:
    """Length-normalised float32 rows; non-finite or all-zero embeddings raise InputError naming the first."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise InputError(f"expected an (N, D) matrix of embeddings, got shape {v.shape}", source)
    norms = np.linalg.norm(v, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        first = ids[bad[0]] if ids is not None else f"row {bad[0]}"
        raise InputError(
            f"{bad.size} embeddings are all-zero or not finite, so their cosine is undefined (first: {first})", source
        )
    return v / norms[:, None]


def run_clustering(
    vectors: np.ndarray,
    options: ClusterOptions,
    on_progress: ProgressFn | None = None,
    ids: Sequence[str] | None = None,
    source: str | None = None,
) -> Clustering:
    """Check ``options`` against the data (InputError before any work), cluster, number canonically."""
    opts = options.resolved(len(vectors), source)
    x = unit_rows(vectors, ids, source)  # checks the raw rows first, so a bad one is named before any fit
    if opts.norm != "none":
        x = unit_rows(Normalizer.fit(vectors, opts.norm).apply(vectors), ids, source)
    stages = _Stages(_STAGES[opts.method], on_progress)
    details: dict[str, Any] = {}
    if opts.method == "kmeans":
        assert opts.n_clusters is not None
        labels, _, details = kmeans(x, opts.n_clusters, opts.seed, stages, opts.kmeans, opts.device)
    elif opts.method == "ahc":
        labels = ahc(x, opts.n_clusters, opts.threshold, stages, opts.ahc)
    elif opts.method == "two-stage":
        assert opts.n_init_clusters is not None
        labels, details = two_stage(
            x,
            opts.n_init_clusters,
            opts.n_clusters,
            opts.threshold,
            opts.seed,
            stages,
            opts.kmeans,
            opts.device,
            opts.ahc,
        )
    else:
        labels, details = spectral(x, opts.n_clusters, opts.max_clusters, opts.p_neighbours, opts.seed, stages)
    details["stage_seconds"] = stages.finish()
    return Clustering(canonical_labels(labels), opts, details)


def cluster_embeddings(
    vectors: np.ndarray, options: ClusterOptions, on_progress: ProgressFn | None = None
) -> np.ndarray:
    """Cluster the rows of ``vectors``: labels 0..K-1, 0 the largest cluster (see :mod:`.naming`)."""
    return run_clustering(vectors, options, on_progress).labels


@dataclass
class ClusterResult:
    """A store's clustering: one label name per ``utt_id``, and the summary (``--json``)."""

    ids: list[str]
    labels: list[str]
    summary: dict[str, Any]

    def text(self) -> str:
        """The label file: ``utt_id label`` lines in store order (:mod:`spkemb.data.labels`)."""
        return format_labels(self.ids, self.labels)


def cluster_store(
    emb: EmbeddingSet,
    options: ClusterOptions,
    on_progress: ProgressFn | None = None,
    source: str | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> ClusterResult:
    """Cluster a store's embeddings; NMI, ARI and purity against its speakers when it has them."""
    bad = next((u for u in emb.ids if not u or any(c.isspace() for c in u)), None)
    if bad is not None:
        raise InputError(f"utt_id {bad!r} contains whitespace, which a label file cannot hold", source)
    t0 = time.perf_counter()
    result = run_clustering(emb.vectors, options, on_progress, emb.ids, source)
    seconds = time.perf_counter() - t0
    opts = result.options
    summary: dict[str, Any] = {
        "method": opts.method,
        "n_embeddings": len(emb),
        "dim": int(emb.vectors.shape[1]) if len(emb) else 0,
        "n_clusters": result.n_clusters,
        "sizes": size_stats(result.labels),
        "seed": opts.seed,
        "options": {k: v for k, v in asdict(opts).items() if k not in ("method", "seed")},
        **result.details,
        "seconds": round(seconds, 3),
    }
    summary.update(_against_speakers(emb.speakers, result.labels))
    return ClusterResult(list(emb.ids), label_names(result.labels, prefix), summary)


def _against_speakers(speakers: Sequence[str] | None, labels: np.ndarray) -> dict[str, Any]:
    """``nmi``/``ari``/``purity`` over the embeddings whose speaker is known (None when none is)."""
    known = np.array([bool(s) for s in speakers]) if speakers is not None else np.zeros(len(labels), bool)
    if not known.any():
        return {"nmi": None, "ari": None, "purity": None, "n_speakers": None, "n_scored": 0}
    true = np.asarray(speakers, dtype=object)[known]
    scores = cluster_metrics(true.astype(str), labels[known])
    return {
        **{k: round(v, 6) for k, v in scores.items()},
        "n_speakers": int(len(set(true.tolist()))),
        "n_scored": int(known.sum()),
    }
