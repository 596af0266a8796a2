"""Clustering: each method on synthetic Gaussian speakers, the count estimates, determinism, and
`spkemb cluster` end to end through the Typer app on tiny stores."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import spkemb.cluster.algorithms as algorithms
import spkemb.cluster.spectral as spectral
from spkemb.cli.app import app
from spkemb.cluster import (
    ClusterOptions,
    canonical_labels,
    cluster_embeddings,
    cluster_metrics,
    label_names,
    purity,
    run_clustering,
    size_stats,
)
from spkemb.data.labels import read_labels
from spkemb.embeddings.store import FORMAT, write_embeddings
from spkemb.errors import InputError

runner = CliRunner()


def speakers(
    n_spk: int = 5,
    per: int = 12,
    dim: int = 16,
    noise: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Utterances of ``n_spk`` speakers: random unit centres plus isotropic noise, rows shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_spk, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = rng.permutation(np.repeat(np.arange(n_spk), per))
    x = centres[truth] + noise * rng.normal(size=(len(truth), dim))
    return (x * rng.uniform(0.5, 3.0, size=(len(truth), 1))).astype(np.float32), truth  # lengths must not matter


@pytest.mark.parametrize(
    "options",
    [
        ClusterOptions("kmeans", n_clusters=5),
        ClusterOptions("ahc", n_clusters=5),
        ClusterOptions("ahc", threshold=0.5),
        ClusterOptions("two-stage", n_clusters=5, n_init_clusters=20),
        ClusterOptions("two-stage", threshold=0.5, n_init_clusters=20),
        ClusterOptions("spectral", n_clusters=5),
        ClusterOptions("spectral"),
    ],
    ids=lambda o: f"{o.method}-k{o.n_clusters}-t{o.threshold}",
)
def test_each_method_recovers_separated_speakers(options: ClusterOptions) -> None:
    x, truth = speakers()
    labels = cluster_embeddings(x, options)
    assert labels.shape == truth.shape
    assert cluster_metrics(truth, labels)["nmi"] > 0.95
    assert len(np.unique(labels)) == 5


def test_many_clusters_use_minibatch_kmeans(monkeypatch: pytest.MonkeyPatch) -> None:
    """The large-scale path (MiniBatchKMeans, random seeding) on small data, with the limits lowered."""
    monkeypatch.setattr(algorithms, "MINIBATCH_ABOVE", 0)
    monkeypatch.setattr(algorithms, "KMEANSPP_UP_TO", 10)
    x, truth = speakers(n_spk=8, per=40, noise=0.05)
    run = run_clustering(x, ClusterOptions("two-stage", n_clusters=8, n_init_clusters=40, seed=3, kmeans="sklearn"))
    assert run.details["kmeans"] == "minibatch"
    assert cluster_metrics(truth, run.labels)["nmi"] > 0.95
    again = run_clustering(x, ClusterOptions("two-stage", n_clusters=8, n_init_clusters=40, seed=3))
    assert np.array_equal(run.labels, again.labels)


@pytest.mark.parametrize("cut", [{"n_clusters": 4}, {"threshold": 0.6}])
def test_two_stage_is_plain_ahc_when_the_first_stage_keeps_every_point(cut: dict) -> None:
    x, truth = speakers(n_spk=4, per=10, noise=0.35)  # noisy: the partition is not simply the truth
    plain = cluster_embeddings(x, ClusterOptions("ahc", **cut))
    run = run_clustering(x, ClusterOptions("two-stage", n_init_clusters=len(x), **cut))
    assert run.details["kmeans_clusters"] == len(x)
    assert np.array_equal(run.labels, plain)
    assert cluster_metrics(truth, plain)["nmi"] < 1.0
    fewer = cluster_embeddings(x, ClusterOptions("two-stage", n_init_clusters=12, **cut))
    assert not np.array_equal(fewer, plain)  # the equality is not a property of any first stage


@pytest.mark.parametrize("n_spk", [3, 7])
def test_threshold_and_eigengap_find_the_count(n_spk: int) -> None:
    x, truth = speakers(n_spk=n_spk, per=10, dim=24, noise=0.08, seed=n_spk)
    for options in (
        ClusterOptions("ahc", threshold=0.5),
        ClusterOptions("two-stage", threshold=0.5, n_init_clusters=4 * n_spk),
    ):
        assert len(np.unique(cluster_embeddings(x, options))) == n_spk
    run = run_clustering(x, ClusterOptions("spectral"))
    assert run.details["estimated_clusters"] == n_spk and run.n_clusters == n_spk
    assert cluster_metrics(truth, run.labels)["nmi"] > 0.95
    # A fixed p, and an upper bound below the truth, are obeyed.
    assert run_clustering(x, ClusterOptions("spectral", p_neighbours=4)).details["p_neighbours"] == 4
    assert run_clustering(x, ClusterOptions("spectral", max_clusters=2)).n_clusters <= 2


def test_sparse_eigenvalues_match_the_dense_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = speakers(n_spk=4, per=15)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    graph = spectral.affinity(spectral.neighbours(x, 5), 5)
    dense = spectral.smallest_eigenvalues(graph, 8, seed=0)
    monkeypatch.setattr(spectral, "DENSE_UP_TO", 10)
    sparse = spectral.smallest_eigenvalues(graph, 8, seed=0)
    assert np.allclose(dense, sparse, atol=1e-6)
    assert np.allclose(dense[:4], 0, atol=1e-6) and dense[4] > 0.05  # 4 components, then the gap
    assert spectral.eigengap(dense, 7)[0] == 4


def test_neighbours_in_row_blocks_match_a_full_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = speakers(n_spk=3, per=9)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    expected = np.argsort(-sim, axis=1, kind="stable")[:, :4]
    monkeypatch.setattr(spectral, "_BLOCK_ELEMS", 5 * len(x))  # blocks of 5 rows
    assert np.array_equal(spectral.neighbours(x, 4), expected)


@pytest.mark.parametrize("method", ["kmeans", "two-stage", "spectral"])
def test_labels_are_deterministic_for_a_seed(method: str) -> None:
    x, _ = speakers(n_spk=6, per=10, noise=0.3)  # ambiguous data, so seeds can matter
    runs = [cluster_embeddings(x, ClusterOptions(method, n_clusters=6, seed=7)) for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])
    sizes = np.bincount(runs[0])
    assert list(sizes) == sorted(sizes, reverse=True)  # canonical: largest cluster first


def test_canonical_names_depend_only_on_the_partition() -> None:
    raw = np.array([7, 3, 3, 9, 7, 3, 9, 1])  # sizes: 3 x3, 7 x2, 9 x2, 1 x1
    canon = canonical_labels(raw)
    assert canon.tolist() == [1, 0, 0, 2, 1, 0, 2, 3]  # 7 before 9: its first member comes first
    assert np.array_equal(canonical_labels(raw * 10 + 5), canon)
    assert label_names(canon)[:4] == ["spk00001", "spk00000", "spk00000", "spk00002"]
    assert label_names(np.array([100_000]), prefix="c")[0] == "c100000"


def test_metrics_and_sizes() -> None:
    truth = np.array(["a", "a", "a", "b", "b", "c"])
    assert purity(truth, np.array([0, 0, 1, 1, 1, 2])) == pytest.approx(5 / 6)
    perfect = cluster_metrics(truth, np.array([5, 5, 5, 0, 0, 9]))
    assert perfect == {"nmi": pytest.approx(1.0), "ari": pytest.approx(1.0), "purity": pytest.approx(1.0)}
    assert cluster_metrics(truth, np.zeros(6, int))["nmi"] == pytest.approx(0.0)
    assert size_stats(np.array([0, 0, 0, 1, 2, 2])) == {"min": 1, "median": 2.0, "max": 3, "mean": 2.0, "singletons": 1}


def test_option_and_data_errors() -> None:
    x, _ = speakers(n_spk=2, per=3)
    bad = [
        (ClusterOptions("kmeans", n_clusters=7), "more than the 6 embeddings"),
        (ClusterOptions("kmeans"), "needs `n_clusters`"),
        (ClusterOptions("kmeans", n_clusters=2, threshold=0.5), "`threshold` is for ahc"),
        (ClusterOptions("ahc"), "exactly one of"),
        (ClusterOptions("ahc", n_clusters=2, threshold=0.5), "exactly one of"),
        (ClusterOptions("ahc", threshold=3.0), "(0, 2]"),
        (ClusterOptions("two-stage", n_clusters=2, n_init_clusters=9), "`n_init_clusters` 9 is more than"),
        (ClusterOptions("two-stage", n_clusters=4, n_init_clusters=3), "fewer than `n_clusters`"),
        (ClusterOptions("ahc", n_clusters=2, n_init_clusters=3), "two-stage only"),
        (ClusterOptions("kmeans", n_clusters=2, p_neighbours=3), "spectral only"),
        (ClusterOptions("spectral", p_neighbours=6), "`p_neighbours` must be below"),
        (ClusterOptions("dbscan", n_clusters=2), "unknown clustering method"),
        (ClusterOptions("kmeans", n_clusters=2, norm="whiten"), "unknown normalisation"),
    ]
    for options, message in bad:
        with pytest.raises(InputError) as err:
            cluster_embeddings(x, options)
        assert message in str(err.value), options
    with pytest.raises(InputError, match="distance matrix.*`ahc` sparse"):
        ClusterOptions("ahc", n_clusters=2, ahc="exact").resolved(1_000_000)
    assert ClusterOptions("ahc", n_clusters=2).resolved(60_000).ahc == "sparse"
    with pytest.raises(InputError, match="spectral is for at most 20,000 embeddings.*`method` two-stage"):
        ClusterOptions("spectral").resolved(20_001)
    assert ClusterOptions("spectral").resolved(20_000).method == "spectral"
    assert ClusterOptions("two-stage", n_clusters=10).resolved(100_000).n_init_clusters == 5000
    x[4] = 0
    x[5, 1] = np.nan
    for norm in ("none", "standardize"):
        with pytest.raises(InputError, match="2 embeddings are all-zero or not finite.*row 4"):
            cluster_embeddings(x, ClusterOptions("kmeans", n_clusters=2, norm=norm))


def test_norm_uses_the_embeddings_own_statistics() -> None:
    x, truth = speakers(n_spk=4, per=10, noise=0.05)
    rng = np.random.default_rng(1)
    # Two loud dimensions that say nothing about the speaker drown raw cosine; standardising fixes it.
    loud = np.hstack([x, 20 * rng.normal(size=(len(x), 2))]).astype(np.float32)
    raw = cluster_embeddings(loud, ClusterOptions("kmeans", n_clusters=4))
    assert cluster_metrics(truth, raw)["nmi"] < 0.8
    fixed = cluster_embeddings(loud, ClusterOptions("kmeans", n_clusters=4, norm="standardize"))
    assert cluster_metrics(truth, fixed)["nmi"] > 0.95


# ---- the command -----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """4 speakers x 6 utterances with their speakers."""
    x, truth = speakers(n_spk=4, per=6, noise=0.1)
    ids = [f"spk{t}/sess/{i:05d}.wav" for i, t in enumerate(truth)]
    return write_embeddings(tmp_path / "emb.h5", ids, x, speakers=[f"spk{t}" for t in truth])


def test_cli_writes_label_file_and_metrics(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.tsv"
    r = runner.invoke(app, ["cluster", str(store), "-o", str(out), "--method", "ahc", "--n-clusters", "4"])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    labels = read_labels(out)
    assert len(labels) == 24 and set(labels.values()) == {f"spk{i:05d}" for i in range(4)}
    assert all(len(line.split()) == 2 for line in out.read_text().splitlines())
    assert all(u.split("/")[0] for u in labels)
    # Every true speaker maps to one cluster.
    assert len({(u.split("/")[0], lab) for u, lab in labels.items()}) == 4
    assert "NMI 1.0000" in r.stderr and "ARI 1.0000" in r.stderr and "purity 1.0000" in r.stderr


def test_cli_json_stdout_and_determinism(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.tsv"
    args = [
        "cluster",
        str(store),
        "--method",
        "two-stage",
        "--n-clusters",
        "4",
        "--n-init-clusters",
        "12",
        "--seed",
        "5",
    ]
    r = runner.invoke(app, [*args, "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["method"] == "two-stage" and summary["n_clusters"] == 4 and summary["kmeans_clusters"] == 12
    assert summary["nmi"] == pytest.approx(1.0) and summary["ari"] == pytest.approx(1.0)
    assert summary["purity"] == pytest.approx(1.0) and summary["n_speakers"] == 4
    assert summary["sizes"] == {"min": 6, "median": 6.0, "max": 6, "mean": 6.0, "singletons": 0}
    assert summary["output"] == str(out)
    for target in ([], ["-o", "-"]):  # stdout by default and with '-': the same file as -o wrote
        r = runner.invoke(app, [*args, *target])
        assert r.exit_code == 0, r.output
        assert r.stdout == out.read_text()


def test_cli_store_without_speakers(tmp_path: Path) -> None:
    x, _ = speakers(n_spk=3, per=5)
    store = write_embeddings(tmp_path / "nospk.h5", [f"u{i}" for i in range(len(x))], x)
    r = runner.invoke(
        app,
        ["cluster", str(store), "--method", "spectral", "--p-neighbours", "3", "-o", str(tmp_path / "l.tsv"), "--json"],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["nmi"] is None and summary["ari"] is None and summary["purity"] is None
    assert summary["n_clusters"] == 3 and summary["p_neighbours"] == 3 and summary["estimated_clusters"] == 3
    assert "unavailable" in r.stderr and "no speaker labels" in r.stderr
    assert len(read_labels(tmp_path / "l.tsv")) == 15


def _empty_store(path: Path) -> Path:
    """A complete store with no rows (write_embeddings cannot chunk an empty dataset)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("utt_id", shape=(0,), dtype=h5py.string_dtype())
        f.create_dataset("embedding", shape=(0, 8), dtype="float32")
        f.attrs.update({"format": FORMAT, "format_version": 1, "complete": True})
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "kmeans", "--n-clusters", "25"], "--n-clusters 25 is more than the 24 embeddings"),
        (["--method", "ahc"], "exactly one of --n-clusters and --threshold"),
        (["--method", "kmeans", "--threshold", "0.4", "--n-clusters", "2"], "--threshold is for ahc"),
        (["--method", "two-stage", "--n-clusters", "3", "--n-init-clusters", "30"], "is more than the 24"),
        (["EMPTY", "--method", "kmeans", "--n-clusters", "2"], "holds no embeddings"),
        (["INPUT", "--method", "kmeans", "--n-clusters", "2"], "the output is the command's embedding store"),
        (["STDOUT-JSON", "--method", "kmeans", "--n-clusters", "2"], "--json prints the summary on stdout"),
        (["MISSING", "--method", "kmeans", "--n-clusters", "2"], "no such embedding store"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(
    store: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "labels.tsv"
    out.write_text("precious\n")
    src, target, extra = store, out, []
    if args[0] == "EMPTY":
        src = _empty_store(tmp_path / "empty.h5")
    elif args[0] == "INPUT":
        target = store
    elif args[0] == "STDOUT-JSON":
        extra = ["-o", "-", "--json"]
    elif args[0] == "MISSING":
        src = tmp_path / "nope.h5"
    opts = args[1:] if args[0].isupper() else args
    before = store.read_bytes()
    r = runner.invoke(app, ["cluster", str(src), *opts, *(extra or ["-o", str(target)])])
    assert r.exit_code == 2, r.output
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0] and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""
    assert out.read_text() == "precious\n" and store.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_output_into_a_pipe_keeps_the_pipe(store: Path, tmp_path: Path) -> None:
    """`-o /dev/null` or a FIFO is written into, never replaced by a renamed regular file."""
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    try:
        r = runner.invoke(app, ["cluster", str(store), "-o", str(fifo), "--method", "kmeans", "--n-clusters", "4"])
    finally:
        if reader.is_alive() and not got:  # the command never opened the pipe: release the reader
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert len(got[0].splitlines()) == 24


@pytest.mark.parametrize("method", ["kmeans", "ahc", "two-stage", "spectral"])
def test_as_many_clusters_as_rows_gives_each_its_own(method: str) -> None:
    """Issue 21 item 18: `--method spectral --n-clusters N` with N the number of rows was a 69-line
    traceback (sklearn's spectral embedding cannot take N components of N points)."""
    x, _ = speakers(n_spk=6, per=5)
    labels = cluster_embeddings(x, ClusterOptions(method, n_clusters=len(x)))
    assert sorted(labels.tolist()) == list(range(len(x)))
