"""Scoring throughput: 1M trials among 10k embeddings (D=192), end to end and in memory.

    python benchmarks/bench_score.py [--trials 1000000] [--ids 10000] [--cohort 1000] [--repeats 3]
                                     [--baseline DIR]

Times, best of ``--repeats`` (the machine's load is printed with them):

* the in-memory path: resolve ids, cosine, every metric (EER, minDCF, actDCF, Cllr, minCllr);
* ``spkemb score TRIALS EMB.h5 -o scores --json`` as a fresh process (start-up, reading the trial
  list and the store, scoring, metrics, writing 1M score lines), plain cosine, with AS-norm against
  a cohort of ``--cohort`` (top-k 300), and with a PLDA model read from a file;
* ``spkemb score --scores scores.txt --json``: metrics from the scores file just written;
* ``spkemb score --help``: start-up alone.

Each command reports its best wall time and its best CPU time (user + sys). With
``--baseline DIR`` (the root of another checkout, e.g. ``git worktree add /tmp/old HEAD~1``) the
cosine, AS-norm and start-up commands also run from there, in turn with this checkout's, so both
see the same load.
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

from spkemb.embeddings.store import EmbeddingSet, write_embeddings
from spkemb.scoring.backends import ScoreSpace
from spkemb.scoring.metrics import summarize
from spkemb.scoring.plda import Plda
from spkemb.scoring.scores_io import TrialTable, resolve_rows


def _best(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(min(times), 3)


def _cli(args: list[str], pythonpath: str | None = None) -> tuple[float, float]:
    """Run ``spkemb score ARGS`` (from ``pythonpath`` when given): wall s and CPU s (user + sys). (Its
    peak memory cannot be read here: a child forked from this large process inherits its high-water
    mark; measure it with ``/usr/bin/time -f %M``.)"""
    env = dict(os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {}))
    t0 = time.perf_counter()
    # `python -m` puts the working folder first on sys.path: run the baseline from its own root.
    proc = subprocess.Popen(
        [sys.executable, "-m", "spkemb", "score", *args],
        env=env,
        cwd=pythonpath,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"spkemb score {' '.join(args)} failed with status {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def _best_cli(args: list[str], repeats: int, baseline: str | None = None) -> dict[str, float]:
    """Best wall and best CPU time of ``spkemb score ARGS``, and of the baseline's
    (``baseline_*``) when given, the two run alternately. On a shared machine the CPU time is the
    steadier figure: waiting for a core does not count in it."""
    runs: dict[str, list[tuple[float, float]]] = {"": [], "baseline_": []}
    for _ in range(repeats):
        runs[""].append(_cli(args))
        if baseline:
            runs["baseline_"].append(_cli(args, baseline))
    out: dict[str, float] = {}
    for prefix, rs in runs.items():
        if rs:
            out.update(
                {f"{prefix}wall_s": round(min(r[0] for r in rs), 3), f"{prefix}cpu_s": round(min(r[1] for r in rs), 3)}
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1_000_000)
    ap.add_argument("--ids", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--cohort", type=int, default=1_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", metavar="DIR", help="another checkout's root: time its `spkemb score` too")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    ids = [f"spk{i // 10:05d}/utt{i:06d}.wav" for i in range(a.ids)]
    speakers = [u.split("/")[0] for u in ids]
    vectors = rng.standard_normal((a.ids, a.dim)).astype(np.float32)
    e, t = rng.integers(a.ids, size=a.trials), rng.integers(a.ids, size=a.trials)
    labels = (e // 10 == t // 10).astype(np.int8)
    labels[: a.trials // 10] = 1  # make sure both classes are present
    id_arr = np.array(ids)
    lines = "\n".join(f"{lab} {x} {y}" for lab, x, y in zip(labels.tolist(), id_arr[e], id_arr[t], strict=True))

    import pyarrow as pa  # type: ignore[import-untyped]

    table = TrialTable(pa.array(id_arr[e]), pa.array(id_arr[t]), labels)
    store = EmbeddingSet(ids, vectors)

    def core() -> None:
        ei, ti, _, _ = resolve_rows(table, store.ids)
        summarize(ScoreSpace.cosine(store.vectors).pairs(ei, ti), labels)

    result: dict[str, object] = {
        "trials": a.trials,
        "ids": a.ids,
        "dim": a.dim,
        "cohort": a.cohort,
        "repeats": a.repeats,
        "load_before": os.getloadavg()[0],
    }
    result["core_s"] = _best(core, a.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        emb, coh, tr, out = d / "e.h5", d / "cohort.h5", d / "trials.txt", d / "scores.txt"
        write_embeddings(emb, ids, vectors, speakers=speakers)
        write_embeddings(coh, [f"c{i}" for i in range(a.cohort)], rng.standard_normal((a.cohort, a.dim)))
        tr.write_text(lines + "\n")
        plda = d / "plda.npz"
        Plda.fit(vectors, speakers).save(plda)
        base = [str(tr), str(emb), "-o", str(out), "--json"]
        asnorm = [*base, "--cohort", str(coh), "--norm", "asnorm", "--top-k", "300"]
        result["cli_cosine"] = _best_cli(base, a.repeats, a.baseline)
        result["cli_asnorm"] = _best_cli(asnorm, a.repeats, a.baseline)
        result["cli_plda"] = _best_cli([*base, "--backend", "plda", "--plda", str(plda)], a.repeats)
        _cli(base)
        result["cli_scores_in"] = _best_cli(["--scores", str(out), "--json"], a.repeats)
        result["cli_help"] = _best_cli(["--help"], a.repeats, a.baseline)
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
