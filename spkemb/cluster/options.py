"""The options of a clustering run, and their check against the number of embeddings."""

from __future__ import annotations

from dataclasses import dataclass, replace

from spkemb.cluster.memory import available_bytes, exact_ahc_bytes, gib
from spkemb.errors import InputError
from spkemb.options import Options, opt
from spkemb.utils.choices import is_device_spec

METHODS = ("kmeans", "ahc", "two-stage", "spectral")
NORMS = ("none", "mean", "standardize")
KMEANS_CHOICES = ("auto", "torch", "sklearn")
AHC_CHOICES = ("auto", "exact", "sparse")
# --ahc auto takes the exact (full-matrix) AHC while its matrices need at most this much (16,384
# points) and fit in half the available memory; the sparse kNN-graph AHC above (50,000 centroids,
# the first stage of Miara et al. at VoxCeleb2 scale, would need 18.6 GiB exact).
EXACT_AUTO_BYTES = 2 * 2**30
DEFAULT_INIT_CLUSTERS = 5_000
#: spectral clustering (a p-neighbour graph and its eigenvectors, for every p the eigengap search
#: tries) is for diarisation-sized sets: 10,000 embeddings took 3 minutes on 2 cores, and its cost
#: grows faster than N; above this it is refused with --method two-stage named
SPECTRAL_MAX_ROWS = 20_000


@dataclass(frozen=True)
class ClusterOptions(Options):
    """How to cluster.

    ``method``: ``kmeans`` (needs ``n_clusters``), ``ahc`` (``n_clusters`` or a cosine-distance
    ``threshold``), ``two-stage`` (k-means to ``n_init_clusters``, then AHC of the centroids to
    ``n_clusters`` or ``threshold``), ``spectral`` (``n_clusters``, or estimated from the eigengap
    among at most ``max_clusters``). ``norm``: ``mean`` subtracts the embeddings' own mean before
    length normalisation, ``standardize`` also divides by their per-dimension standard deviation (as
    ``spkemb score --norm`` does with a cohort). ``p_neighbours``: spectral's p-pruning (each point keeps its p
    most similar neighbours); ``None`` picks p by the NME criterion of Park et al. (2019).
    """

    method: str = opt("two-stage", "kmeans, ahc, two-stage or spectral")
    n_clusters: int | None = opt(None, "number of clusters")
    threshold: float | None = opt(None, "ahc / two-stage: stop merging at this average cosine distance")
    n_init_clusters: int | None = opt(None, "two-stage: k-means clusters of the first stage")
    max_clusters: int = opt(50, "spectral: the largest count the eigengap estimate considers")
    p_neighbours: int | None = opt(None, "spectral: neighbours kept per embedding in the affinity")
    norm: str = opt("none", "none, mean or standardize before cosine")
    seed: int = opt(0, "random seed")
    device: str = opt("auto", "k-means device: auto (CUDA when available), cpu, cuda or cuda:N")
    kmeans: str = opt("auto", "k-means implementation: auto (= torch), torch (matmul Lloyd), sklearn")
    ahc: str = opt("auto", "AHC: auto (exact while it fits, else sparse), exact (full matrix), sparse (kNN graph)")

    def resolved(self, n: int, source: str | None = None) -> ClusterOptions:
        """These options checked against ``n`` embeddings, with defaults filled in; InputError if unusable."""
        if self.method not in METHODS:
            raise InputError(f"unknown clustering method {self.method!r} (choose {', '.join(METHODS)})")
        if self.norm not in NORMS:
            raise InputError(f"unknown normalisation {self.norm!r} (choose {', '.join(NORMS)})")
        if n == 0:
            raise InputError("the store holds no embeddings; nothing to cluster", source)
        if self.norm != "none" and n < 2:
            raise InputError(f"`norm` {self.norm} needs at least 2 embeddings", source)
        _check_count("`n_clusters`", self.n_clusters, n, source)
        self._check_method()
        if self.method == "spectral" and n > SPECTRAL_MAX_ROWS:
            raise InputError(
                f"`method` spectral is for at most {SPECTRAL_MAX_ROWS:,} embeddings (10,000 take minutes and its "
                f"cost grows faster than their number); for {n:,} use `method` two-stage (k-means, then AHC)",
                source,
            )
        m = self.n_init_clusters
        if self.method == "two-stage":
            m = min(n, max(DEFAULT_INIT_CLUSTERS, 5 * (self.n_clusters or 0))) if m is None else m
            _check_count("`n_init_clusters`", m, n, source)
            if self.n_clusters is not None and m < self.n_clusters:
                raise InputError(f"`n_init_clusters` {m} is fewer than `n_clusters` {self.n_clusters}")
        points = n if self.method == "ahc" else (m or 0) if self.method == "two-stage" else 0
        ahc = self._ahc_kind(points)
        if self.p_neighbours is not None and not 1 <= self.p_neighbours < max(n, 2):
            raise InputError(
                f"`p_neighbours` must be below the number of embeddings ({n}), got {self.p_neighbours}", source
            )
        kmeans = self.kmeans
        if kmeans == "auto":
            kmeans = "torch"
        device = (self.device or "auto").strip().lower()
        if self.method in ("kmeans", "two-stage") and kmeans == "torch":
            from spkemb.utils.runtime import resolve_device  # torch: only where the k-means needs it

            device = str(resolve_device(device))
        elif device == "auto" or kmeans == "sklearn":
            device = "cpu"
        return replace(self, n_init_clusters=m, ahc=ahc, kmeans=kmeans, device=device)

    def _ahc_kind(self, points: int) -> str:
        """exact or sparse for an AHC of ``points``; an exact one that cannot fit is an InputError."""
        if points == 0:
            return self.ahc
        need, have = exact_ahc_bytes(points), available_bytes()
        if self.ahc == "exact" and need > have:
            raise InputError(
                f"exact AHC of {points} points needs about {gib(need)} for its distance matrix and linkage's "
                f"copy, more than the {gib(have)} available; use `ahc` sparse (a kNN graph, O(points) memory)"
            )
        if self.ahc == "auto":
            return "exact" if need <= min(EXACT_AUTO_BYTES, have // 2) else "sparse"
        return self.ahc

    def _check_method(self) -> None:
        """Which options each method takes (independent of the data)."""
        k, t = self.n_clusters, self.threshold
        if t is not None and not 0 < t <= 2:
            raise InputError(f"`threshold` is a cosine distance in (0, 2], got {t}")
        if self.n_init_clusters is not None and self.method != "two-stage":
            raise InputError("`n_init_clusters` is for `method` two-stage only")
        if self.method in ("kmeans", "spectral") and t is not None:
            raise InputError(f"`threshold` is for ahc and two-stage; `method` {self.method} takes `n_clusters`")
        if self.p_neighbours is not None and self.method != "spectral":
            raise InputError("`p_neighbours` is for `method` spectral only")
        if self.method == "kmeans" and k is None:
            raise InputError("`method` kmeans needs `n_clusters`")
        if self.method in ("ahc", "two-stage") and (k is None) == (t is None):
            raise InputError(f"`method` {self.method} needs exactly one of `n_clusters` and `threshold`")
        if self.kmeans not in KMEANS_CHOICES:
            raise InputError(f"unknown `kmeans` {self.kmeans!r} (choose {', '.join(KMEANS_CHOICES)})")
        if self.ahc not in AHC_CHOICES:
            raise InputError(f"unknown `ahc` {self.ahc!r} (choose {', '.join(AHC_CHOICES)})")
        if not is_device_spec(self.device or "auto"):
            raise InputError(f"`device` must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        if self.kmeans == "sklearn" and (self.device or "auto").strip().lower() not in ("auto", "cpu"):
            raise InputError(f"`kmeans` sklearn runs on the CPU only, not `device` {self.device}")
        if self.max_clusters < 1:
            raise InputError(f"`max_clusters` must be at least 1, got {self.max_clusters}")


def _check_count(field: str, value: int | None, n: int, source: str | None) -> None:
    if value is None:
        return
    if value < 1:
        raise InputError(f"{field} must be at least 1, got {value}")
    if value > n:
        raise InputError(f"{field} {value} is more than the {n} embeddings in the store", source)
