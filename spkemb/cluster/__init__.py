"""Clustering of speaker embeddings: k-means, AHC, two-stage (k-means then AHC of the centroids) and
spectral (p-pruned cosine affinity, eigengap count), with NMI / ARI / purity against true speakers.

``cluster_embeddings(vectors, ClusterOptions(method="two-stage", n_clusters=1000))`` returns labels
0..K-1 (0 = the largest cluster); ``cluster_store`` does the same for an embedding store and names
the clusters ``spk00000``... for a label file (:mod:`spkemb.data.labels`).
"""

from spkemb.cluster.core import (
    Clustering,
    ClusterResult,
    ProgressFn,
    cluster_embeddings,
    cluster_store,
    run_clustering,
    unit_rows,
)
from spkemb.cluster.metrics import cluster_metrics, purity, size_stats
from spkemb.cluster.naming import canonical_labels, label_names
from spkemb.cluster.options import METHODS, ClusterOptions

__all__ = [
    "METHODS",
    "ClusterOptions",
    "ClusterResult",
    "Clustering",
    "ProgressFn",
    "canonical_labels",
    "cluster_embeddings",
    "cluster_metrics",
    "cluster_store",
    "label_names",
    "purity",
    "run_clustering",
    "size_stats",
    "unit_rows",
]
