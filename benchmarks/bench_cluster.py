"""Clustering: time and peak memory at 100k x 192, and NMI / ARI / purity on real test-other embeddings.

    python benchmarks/bench_cluster.py [--n 100000] [--dim 192] [--speakers 1000] [--skip-real]

Scale: synthetic Gaussian speakers (unit centres plus noise) written to a store, then each
`spkemb cluster` command run in a fresh process, so its wall time and peak RSS (``ru_maxrss`` of the
child) are the whole command's: reading the store, clustering, writing the label file.
Quality: `spkemb cluster` with each method on the MFCC baseline's test-other embeddings (100
utterances, 10 speakers; made by ``benchmarks/libri.sh`` and ``spkemb extract mfcc-stats``), raw
and standardised. One JSON line per run on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from spkemb.embeddings.store import write_embeddings

ROOT = Path(__file__).resolve().parent.parent


def synthetic(n: int, dim: int, n_spk: int, noise: float, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_spk, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = rng.integers(n_spk, size=n)
    x = centres[truth] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return x, [f"s{t:05d}" for t in truth]


def run_cli(args: list[str]) -> dict:
    """Run `spkemb cluster ARGS --json` in a child; its summary plus wall time and the child's peak RSS."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "spkemb", "cluster", *args, "--json"], stdout=out, stderr=err, text=True, cwd=ROOT
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if child.returncode:
            raise SystemExit(f"spkemb cluster {' '.join(args)} failed:\n{err.read()}")
        summary = json.loads(out.read())
    summary.update(
        wall_seconds=round(wall, 2),
        peak_rss_mib=round(usage.ru_maxrss / 1024),
        command="spkemb cluster " + " ".join(args),
    )
    return summary


def scale(a: argparse.Namespace) -> None:
    x, spk = synthetic(a.n, a.dim, a.speakers, a.noise)
    runs = [
        ["--method", "kmeans", "--n-clusters", str(a.speakers)],
        ["--method", "two-stage", "--n-clusters", str(a.speakers), "--n-init-clusters", str(a.init_clusters)],
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = write_embeddings(Path(tmp) / "synthetic.h5", [f"u{i:07d}" for i in range(a.n)], x, speakers=spk)
        for args in runs:
            s = run_cli([str(store), "-o", str(Path(tmp) / "labels.tsv"), *args])
            keep = (
                "method",
                "n_embeddings",
                "dim",
                "n_clusters",
                "kmeans",
                "kmeans_init",
                "kmeans_clusters",
                "nmi",
                "ari",
                "purity",
                "sizes",
                "stage_seconds",
                "seconds",
                "wall_seconds",
                "peak_rss_mib",
            )
            print(
                json.dumps(
                    {
                        "part": "scale",
                        "data_mib": round(x.nbytes / 2**20),
                        **{k: s.get(k) for k in keep},
                        "command": s["command"].replace(tmp, "$TMP"),
                    }
                ),
                flush=True,
            )


FAISS_PY = Path(os.environ.get("FAISS_PY", "/work/venvs/faiss/bin/python"))
_FAISS = """
import sys, time, numpy as np, faiss
x = np.load(sys.argv[1]); k = int(sys.argv[2])
t = time.perf_counter()
km = faiss.Kmeans(x.shape[1], k, niter=20, seed=0, spherical=False, verbose=False)
km.train(x)
labels = km.index.search(x, 1)[1].ravel()
print(time.perf_counter() - t)
np.save(sys.argv[3], labels); np.save(sys.argv[4], km.centroids)
"""


def compare_kmeans(a: argparse.Namespace) -> None:
    """faiss, torch and sklearn k-means side by side: time, and the NMI after the same AHC of their centroids."""
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from spkemb.cluster.algorithms import ahc, kmeans

    x, spk = synthetic(a.n, a.dim, a.speakers, a.noise)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    truth = np.unique(spk, return_inverse=True)[1]
    for k in a.compare_k:
        results: dict[str, tuple[float, np.ndarray, np.ndarray]] = {}
        for impl in ("torch", "sklearn"):
            t0 = time.perf_counter()
            labels, cents, _ = kmeans(x, k, 0, impl=impl)
            results[impl] = (time.perf_counter() - t0, labels, cents)
        if FAISS_PY.exists():
            with tempfile.TemporaryDirectory() as tmp:
                np.save(f"{tmp}/x.npy", x)
                out = subprocess.run(
                    [str(FAISS_PY), "-c", _FAISS, f"{tmp}/x.npy", str(k), f"{tmp}/l.npy", f"{tmp}/c.npy"],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                raw = np.load(f"{tmp}/l.npy")
                used, labels = np.unique(raw, return_inverse=True)
                results["faiss"] = (float(out.stdout.split()[-1]), labels, np.load(f"{tmp}/c.npy")[used])
        else:
            print(f"faiss: skipped ({FAISS_PY} absent; pip install faiss-cpu into a venv there)", file=sys.stderr)
        for impl, (secs, labels, cents) in results.items():
            c = cents / np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
            final = ahc(c, min(a.speakers, len(c)))[labels] if k > a.speakers else labels
            row = {"part": "compare-kmeans", "impl": impl, "n": a.n, "k": k, "kmeans_seconds": round(secs, 2)}
            row.update(nmi_kmeans=round(nmi(truth, labels), 4), nmi_after_ahc=round(nmi(truth, final), 4))
            print(json.dumps({**row, "load": [round(v, 1) for v in os.getloadavg()]}), flush=True)


def compare_ahc(a: argparse.Namespace) -> None:
    """Exact (full-matrix) against sparse (kNN-graph) AHC of centroid-like points: NMI between and vs truth.

    The points stand for the first stage's centroids at the seed's ratios: 50,000 centroids of 5,994
    speakers (8.3 per speaker), cut to 7,500 / 50,000 of their count. Each speaker has a unit centre and
    its centroids lie about its centre with scale.py's per-speaker spread times ``--centroid-spread`` (a
    centroid is the mean of a part of the speaker's cloud, so it sits part way out).
    """
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from spkemb.cluster.algorithms import ahc

    rng = np.random.default_rng(0)
    n, dim = a.n, a.dim
    n_spk = max(2, round(n * 5_994 / 50_000))
    centres = rng.standard_normal((n_spk, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.6, 1.1, n_spk).astype(np.float32) / np.sqrt(dim) * a.centroid_spread
    truth = rng.integers(n_spk, size=n)
    x = centres[truth] + spread[truth, None] * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = max(2, round(n * 7_500 / 50_000))
    labels: dict[str, np.ndarray] = {}
    for kind in ("exact", "sparse"):
        t0 = time.perf_counter()
        labels[kind] = ahc(x, k, kind=kind)
        row = {"part": "compare-ahc", "kind": kind, "n": n, "speakers": n_spk, "n_clusters": k}
        row.update(seconds=round(time.perf_counter() - t0, 1), nmi_truth=round(nmi(truth, labels[kind]), 4))
        print(json.dumps({**row, "load": [round(v, 1) for v in os.getloadavg()]}), flush=True)
    between = round(nmi(labels["exact"], labels["sparse"]), 4)
    print(json.dumps({"part": "compare-ahc", "n": n, "nmi_exact_vs_sparse": between}), flush=True)


def real(a: argparse.Namespace) -> None:
    store = ROOT / "benchmarks/out/mfcc-stats.test.h5"
    if not store.is_file():
        subprocess.run(
            [
                "bash",
                "-c",
                "source benchmarks/libri.sh && spkemb extract mfcc-stats $W/test-other.tsv -o $W/mfcc-stats.test.h5",
            ],
            check=True,
            cwd=ROOT,
        )
    if not store.is_file():
        print("real: skipped (no corpora; set SPKEMB_CORPORA)", file=sys.stderr)
        return
    methods = [
        ["--method", "kmeans", "--n-clusters", "10"],
        ["--method", "ahc", "--n-clusters", "10"],
        ["--method", "two-stage", "--n-clusters", "10", "--n-init-clusters", "30"],
        ["--method", "spectral", "--n-clusters", "10"],
        ["--method", "spectral"],
    ]
    keep = (
        "method",
        "n_clusters",
        "nmi",
        "ari",
        "purity",
        "p_neighbours",
        "estimated_clusters",
        "sizes",
        "seconds",
        "wall_seconds",
        "peak_rss_mib",
    )
    with tempfile.TemporaryDirectory() as tmp:
        for norm in ("none", "standardize"):
            for args in methods:
                s = run_cli([str(store.relative_to(ROOT)), "-o", str(Path(tmp) / "labels.tsv"), *args, "--norm", norm])
                print(
                    json.dumps(
                        {
                            "part": "real",
                            "norm": norm,
                            **{k: s.get(k) for k in keep},
                            "command": s["command"].replace(tmp, "$TMP"),
                        }
                    ),
                    flush=True,
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--speakers", type=int, default=1000)
    ap.add_argument("--init-clusters", type=int, default=5000)
    ap.add_argument("--noise", type=float, default=0.06, help="per-dimension noise std around unit centres")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--compare-kmeans", action="store_true", help="only: faiss / torch / sklearn k-means side by side")
    ap.add_argument("--compare-k", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--compare-ahc", action="store_true", help="only: exact vs sparse AHC of --n centroid-like points")
    ap.add_argument("--centroid-spread", type=float, default=0.5, help="--compare-ahc: centroid spread / utterance's")
    a = ap.parse_args()
    if a.compare_ahc:
        compare_ahc(a)
        return
    if a.compare_kmeans:
        compare_kmeans(a)
        return
    if not a.skip_real:
        real(a)
    if not a.skip_scale:
        scale(a)


if __name__ == "__main__":
    main()
