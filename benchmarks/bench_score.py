"""Scoring throughput: 1M cosine trials among 10k embeddings (D=192), with EER and minDCF.

    python benchmarks/bench_score.py [--trials 1000000] [--ids 10000]

Times the in-memory path (id resolution, cosine, metrics) and the whole `spkemb score` command
(reading the trial list and the store, writing the scores file).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from spkemb.data.trials import Trials, write_trials
from spkemb.embeddings.store import write_embeddings
from spkemb.scoring.backends import cosine_scores, resolve_ids
from spkemb.scoring.metrics import summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1_000_000)
    ap.add_argument("--ids", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=192)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    ids = [f"spk{i // 10:05d}/utt{i:06d}.wav" for i in range(a.ids)]
    vectors = rng.standard_normal((a.ids, a.dim)).astype(np.float32)
    e, t = rng.integers(a.ids, size=a.trials), rng.integers(a.ids, size=a.trials)
    labels = (e // 10 == t // 10).astype(np.int8)
    labels[: a.trials // 10] = 1  # make sure both classes are present
    trials = Trials([ids[i] for i in e], [ids[i] for i in t], labels)
    index = {u: i for i, u in enumerate(ids)}

    t0 = time.perf_counter()
    ei, ti, _, _ = resolve_ids(trials, index)
    scores = cosine_scores(vectors, ei, ti)
    summarize(scores, trials.labels)
    core = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        store, tr, out = Path(tmp) / "e.h5", Path(tmp) / "trials.txt", Path(tmp) / "scores.txt"
        write_embeddings(store, ids, vectors)
        write_trials(trials, tr)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "spkemb", "score", str(tr), str(store), "-o", str(out), "--json"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        whole = time.perf_counter() - t0
    print(json.dumps({"trials": a.trials, "ids": a.ids, "dim": a.dim,
                      "core_trials_per_s": round(a.trials / core), "core_seconds": round(core, 3),
                      "cli_trials_per_s": round(a.trials / whole), "cli_seconds": round(whole, 3)}))


if __name__ == "__main__":
    main()
