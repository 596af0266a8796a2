"""Clustering at scale, on small N: the torch k-means against sklearn's, its batching and two-level
path, the sparse (kNN-graph) AHC against the exact one, --device / --kmeans / --ahc and their refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.metrics import normalized_mutual_info_score as nmi
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.cluster import ClusterOptions, run_clustering
from spkemb.cluster.algorithms import ahc
from spkemb.cluster.kmeans import torch_kmeans
from spkemb.cluster.sparse_ahc import knn_graph, sparse_ahc
from spkemb.embeddings.store import write_embeddings

runner = CliRunner()


def speakers(n_spk: int, per: int, dim: int = 24, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length rows around ``n_spk`` random unit centres, shuffled, and their true speakers."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_spk, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = rng.permutation(np.repeat(np.arange(n_spk), per))
    x = centres[truth] + noise * rng.normal(size=(len(truth), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def test_torch_kmeans_agrees_with_sklearn_on_separable_data() -> None:
    x, truth = speakers(12, 30)
    ours, cents, details = torch_kmeans(x, 12, seed=0)
    theirs = KMeans(12, n_init=3, random_state=0).fit_predict(x)
    assert nmi(theirs, ours) >= 0.99 and nmi(truth, ours) >= 0.99
    assert cents.shape == (12, x.shape[1]) and details["kmeans"] == "torch"


def test_kmeanspp_seeds_one_row_per_speaker_also_from_a_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy k-means++ seeds distinct rows of x, one in each separated speaker, also when it seeds from
    a sample of SEED_ROWS_PER_CLUSTER x k rows (forced here to 16 x 15 = 240 of 600 rows)."""
    from spkemb.cluster import kmeans as km

    x, truth = speakers(15, 40, noise=0.05)
    rows = {tuple(r) for r in x.round(6)}
    for per_cluster in (km.SEED_ROWS_PER_CLUSTER, 16):
        monkeypatch.setattr(km, "SEED_ROWS_PER_CLUSTER", per_cluster)
        seeds = km._seed(torch.from_numpy(x), 15, torch.Generator().manual_seed(3)).numpy()
        assert len({tuple(r) for r in seeds.round(6)}) == 15 and {tuple(r) for r in seeds.round(6)} <= rows
        nearest = (seeds @ x.T).argmax(1)  # each seed is a row of x: its own index
        assert len(set(truth[nearest])) == 15


def test_batching_gives_the_labels_of_one_batch() -> None:
    x, _ = speakers(10, 20, noise=0.3)
    whole, _, _ = torch_kmeans(x, 25, seed=4)
    batched, _, _ = torch_kmeans(x, 25, seed=4, batch=7)
    assert np.array_equal(whole, batched)


def test_two_level_kmeans_finds_the_speakers() -> None:
    """The coarse-groups-then-probed-refinement path (used for many points x clusters), forced on small data."""
    x, truth = speakers(20, 25)
    labels, cents, details = torch_kmeans(x, 40, seed=1, flat_up_to=0)
    assert details["kmeans"] == "torch two-level" and details["kmeans_coarse_groups"] == 6
    assert len(cents) == 40 and labels.max() < 40
    # over-clustered 2x: each k-means cluster should be nearly pure
    table = np.zeros((40, 20), int)
    np.add.at(table, (labels, truth), 1)
    assert table.max(1).sum() / len(x) >= 0.98


def test_sparse_ahc_finds_nearly_the_exact_partition() -> None:
    x, truth = speakers(30, 10, noise=0.1, seed=2)
    exact = ahc(x, 30, None, kind="exact")
    sparse = sparse_ahc(x, 30, None, k=10)
    assert nmi(exact, sparse) >= 0.95
    assert nmi(truth, exact) >= 0.95 and nmi(truth, sparse) >= 0.95
    by_threshold = sparse_ahc(x, None, 0.5, k=10)
    assert 1 < by_threshold.max() + 1 < len(x)


def overlapping(n: int, n_spk: int, dim: int = 32, spread: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Centroid-like rows of speakers that overlap (benchmarks/bench_cluster.py --compare-ahc's generator)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_spk, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread_of = rng.uniform(0.6, 1.1, n_spk) / np.sqrt(dim) * spread
    truth = rng.integers(n_spk, size=n)
    x = centres[truth] + spread_of[truth, None] * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def test_sparse_ahc_keeps_the_exact_partition_where_speakers_overlap() -> None:
    """Linkage over all member pairs, not only the linked ones: sklearn's connectivity-constrained
    average linkage (the earlier implementation) gave NMI 0.66 against the exact partition here."""
    x, truth = overlapping(1500, 180)
    exact = ahc(x, 225, None, kind="exact")
    sparse = sparse_ahc(x, 225, None)
    assert nmi(exact, sparse) >= 0.97
    assert nmi(truth, sparse) >= nmi(truth, exact) - 0.01


def test_sparse_ahc_on_the_complete_graph_is_scipys_average_linkage() -> None:
    """With every pair linked the merges are exactly the full-matrix method's, cut by count or distance."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((150, 8)).astype(np.float32)
    for n_clusters, threshold in ((12, None), (None, 0.9)):
        exact = ahc(x, n_clusters, threshold, kind="exact")
        sparse = sparse_ahc(x, n_clusters, threshold, k=len(x) - 1)
        assert adjusted_rand_score(exact, sparse) == 1.0


def test_sparse_ahc_joins_components_the_graph_leaves_apart() -> None:
    """Three far-apart groups of 6 with 2 neighbours each: the graph has at least 3 components, yet a
    count below that is still reached, by linking the components' clusters at their exact distance."""
    x, truth = speakers(3, 6, noise=0.01, seed=1)
    parts, _ = connected_components(knn_graph(x, 2))
    assert parts >= 3
    assert nmi(truth, sparse_ahc(x, 3, None, k=2)) == 1.0
    assert set(sparse_ahc(x, 2, None, k=2).tolist()) == {0, 1}
    assert set(sparse_ahc(x, None, 1.9, k=2).tolist()) == {0}


def test_two_stage_choices_are_reported() -> None:
    x, truth = speakers(8, 20)
    for kmeans, ahc_kind in (("torch", "sparse"), ("sklearn", "exact")):
        run = run_clustering(
            x, ClusterOptions("two-stage", n_clusters=8, n_init_clusters=32, kmeans=kmeans, ahc=ahc_kind, device="cpu")
        )
        assert run.options.kmeans == kmeans and run.options.ahc == ahc_kind and run.options.device == "cpu"
        assert nmi(truth, run.labels) >= 0.99


def test_kmeans_progress_notes_stay_in_their_stage() -> None:
    x, _ = speakers(8, 20, noise=0.4)
    seen: list[tuple[str, int, int]] = []
    run = run_clustering(
        x, ClusterOptions("two-stage", n_clusters=8, n_init_clusters=40), lambda s, d, t: seen.append((s, d, t))
    )
    assert any("iteration" in s for s, _, _ in seen)
    assert set(run.details["stage_seconds"]) == {"kmeans", "ahc"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA k-means runs in gpu_check.sh")
def test_cuda_kmeans_matches_the_cpu() -> None:
    x, truth = speakers(12, 30)
    run = run_clustering(x, ClusterOptions("two-stage", n_clusters=12, n_init_clusters=48, device="cuda"))
    assert run.options.device.startswith("cuda") and run.details["kmeans_device"].startswith("cuda")
    cpu = run_clustering(x, ClusterOptions("two-stage", n_clusters=12, n_init_clusters=48, device="cpu"))
    assert nmi(cpu.labels, run.labels) >= 0.99 and nmi(truth, run.labels) >= 0.99


@pytest.fixture
def store(tmp_path: Path) -> Path:
    x, truth = speakers(4, 6)
    return write_embeddings(tmp_path / "emb.h5", [f"u{i:03d}" for i in range(len(x))], x)


def _refused(store: Path, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "labels.tsv"
    r = runner.invoke(app, ["cluster", str(store), "-o", str(out), *args])
    assert r.exit_code == 2, r.output
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0] and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-clusters", "2", "--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N"),
        (["--n-clusters", "2", "--device", "cuda:99"], "--device cuda:99"),
        (["--n-clusters", "2", "--kmeans", "sklearn", "--device", "cuda"], "--kmeans sklearn runs on the CPU only"),
        (["--n-clusters", "30"], "is more than the 24 embeddings"),
        (["--method", "kmeans", "--n-clusters", "25"], "--n-clusters 25 is more than the 24 embeddings"),
    ],
)
def test_cli_refusals_are_one_line(store: Path, tmp_path: Path, args: list[str], message: str) -> None:
    _refused(store, tmp_path, args, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the refusal is for CPU-only ones")
def test_cli_cuda_without_cuda_is_one_line(store: Path, tmp_path: Path) -> None:
    _refused(store, tmp_path, ["--n-clusters", "2", "--device", "cuda"], "CUDA is not available")


def test_exact_ahc_beyond_memory_is_refused_with_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    import spkemb.cluster.options as options
    from spkemb.errors import InputError

    monkeypatch.setattr(options, "available_bytes", lambda: 1000)
    with pytest.raises(InputError, match=r"exact AHC of 100 points needs about 0\.0 GiB.*`ahc` sparse"):
        ClusterOptions("ahc", n_clusters=2, ahc="exact").resolved(100)
    assert ClusterOptions("ahc", n_clusters=2).resolved(100).ahc == "sparse"  # auto: what fits


def test_cli_sparse_ahc_and_device_cpu(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.tsv"
    r = runner.invoke(
        app, ["cluster", str(store), "-o", str(out), "--n-clusters", "4", "--n-init-clusters", "12", "--ahc", "sparse"]
    )
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 24
    assert "sparse AHC" in r.stderr and "torch k-means on cpu" in r.stderr
