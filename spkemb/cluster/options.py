"""The options of a clustering run, and their check against the number of embeddings."""

from __future__ import annotations

from dataclasses import dataclass, replace

from spkemb.errors import InputError

METHODS = ("kmeans", "ahc", "two-stage", "spectral")
NORMS = ("none", "mean", "standardize")
# AHC holds a condensed N x N float64 distance matrix twice (scipy's linkage works on a copy), N (N - 1) x 8
# bytes: 50,000 points (the first stage of Miara et al. at VoxCeleb2 scale) take 18.6 GiB. Beyond that,
# cluster k-means centroids instead.
AHC_MAX_POINTS = 50_000
DEFAULT_INIT_CLUSTERS = 5_000


@dataclass(frozen=True)
class ClusterOptions:
    """How to cluster.

    ``method``: ``kmeans`` (needs ``n_clusters``), ``ahc`` (``n_clusters`` or a cosine-distance
    ``threshold``), ``two-stage`` (k-means to ``n_init_clusters``, then AHC of the centroids to
    ``n_clusters`` or ``threshold``), ``spectral`` (``n_clusters``, or estimated from the eigengap
    among at most ``max_clusters``). ``norm``: ``mean`` subtracts the embeddings' own mean before
    length normalisation, ``standardize`` also divides by their per-dimension standard deviation (as
    ``spkemb score --norm`` does with a cohort). ``p_neighbours``: spectral's p-pruning (each point keeps its p
    most similar neighbours); ``None`` picks p by the NME criterion of Park et al. (2019).
    """

    method: str = "two-stage"
    n_clusters: int | None = None
    threshold: float | None = None
    n_init_clusters: int | None = None
    max_clusters: int = 50
    p_neighbours: int | None = None
    norm: str = "none"
    seed: int = 0

    def resolved(self, n: int, source: str | None = None) -> ClusterOptions:
        """These options checked against ``n`` embeddings, with defaults filled in; InputError if unusable."""
        if self.method not in METHODS:
            raise InputError(f"unknown clustering method {self.method!r} (choose {', '.join(METHODS)})")
        if self.norm not in NORMS:
            raise InputError(f"unknown normalisation {self.norm!r} (choose {', '.join(NORMS)})")
        if n == 0:
            raise InputError("the store holds no embeddings; nothing to cluster", source)
        if self.norm != "none" and n < 2:
            raise InputError(f"--norm {self.norm} needs at least 2 embeddings", source)
        _check_count("--n-clusters", self.n_clusters, n, source)
        self._check_method()
        m = self.n_init_clusters
        if self.method == "two-stage":
            m = min(n, max(DEFAULT_INIT_CLUSTERS, 5 * (self.n_clusters or 0))) if m is None else m
            _check_count("--n-init-clusters", m, n, source)
            if self.n_clusters is not None and m < self.n_clusters:
                raise InputError(f"--n-init-clusters {m} is fewer than --n-clusters {self.n_clusters}")
        points = n if self.method == "ahc" else (m or 0) if self.method == "two-stage" else 0
        if points > AHC_MAX_POINTS:
            gib = points * (points - 1) * 8 / 2**30
            hint = "use --method two-stage" if self.method == "ahc" else "lower --n-init-clusters"
            raise InputError(
                f"AHC of {points} points needs {gib:.0f} GiB for its distance matrix (at most "
                f"{AHC_MAX_POINTS} points); {hint}"
            )
        if self.p_neighbours is not None and not 1 <= self.p_neighbours < max(n, 2):
            raise InputError(
                f"--p-neighbours must be below the number of embeddings ({n}), got {self.p_neighbours}", source
            )
        return replace(self, n_init_clusters=m)

    def _check_method(self) -> None:
        """Which options each method takes (independent of the data)."""
        k, t = self.n_clusters, self.threshold
        if t is not None and not 0 < t <= 2:
            raise InputError(f"--threshold is a cosine distance in (0, 2], got {t}")
        if self.n_init_clusters is not None and self.method != "two-stage":
            raise InputError("--n-init-clusters is for --method two-stage only")
        if self.method in ("kmeans", "spectral") and t is not None:
            raise InputError(f"--threshold is for ahc and two-stage; --method {self.method} takes --n-clusters")
        if self.p_neighbours is not None and self.method != "spectral":
            raise InputError("--p-neighbours is for --method spectral only")
        if self.method == "kmeans" and k is None:
            raise InputError("--method kmeans needs --n-clusters")
        if self.method in ("ahc", "two-stage") and (k is None) == (t is None):
            raise InputError(f"--method {self.method} needs exactly one of --n-clusters and --threshold")
        if self.max_clusters < 1:
            raise InputError(f"--max-clusters must be at least 1, got {self.max_clusters}")


def _check_count(flag: str, value: int | None, n: int, source: str | None) -> None:
    if value is None:
        return
    if value < 1:
        raise InputError(f"{flag} must be at least 1, got {value}")
    if value > n:
        raise InputError(f"{flag} {value} is more than the {n} embeddings in the store", source)
