"""How well each encoder's embeddings cluster into speakers (issue 10): `spkemb cluster` on stores of
the same utterances made by different encoders, NMI / ARI / purity against the true speakers.

    python benchmarks/cluster_encoders.py NAME=STORE.h5 [NAME=STORE.h5 ...] [--clusters 10]

For each store, three commands (each an ordinary `spkemb cluster ... --json` in a fresh process):
k-means and average-linkage AHC to the true speaker count, and spectral clustering with the count
estimated from the eigengap. Prints one Markdown table row per store.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = {
    "kmeans": ["--method", "kmeans", "--n-clusters", "{k}"],
    "ahc": ["--method", "ahc", "--n-clusters", "{k}"],
    "spectral (eigengap)": ["--method", "spectral"],
}


def cluster(store: str, args: list[str], k: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "spkemb",
            "cluster",
            store,
            "-o",
            str(Path(tmp) / "labels.tsv"),
            "--json",
            *(a.format(k=k) for a in args),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+", metavar="NAME=STORE.h5")
    ap.add_argument("--clusters", type=int, default=10, help="the true speaker count (k-means and AHC)")
    a = ap.parse_args()
    print("| encoder | " + " | ".join(f"{r}: clusters / NMI / ARI / purity" for r in RUNS) + " |")
    print("| --- |" + " --- |" * len(RUNS))
    for item in a.stores:
        name, _, store = item.partition("=")
        cells = []
        for args in RUNS.values():
            s = cluster(store, args, a.clusters)
            cells.append(f"{s['n_clusters']} / {s['nmi']:.3f} / {s['ari']:.3f} / {s['purity']:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
