"""Start-up of `spkemb extract`: what a run costs before its first file, in CPU seconds.

    python benchmarks/bench_startup.py [--repeats 3]

Each phase runs in a fresh interpreter (imports are cached within one): importing the command line,
importing the extraction module (torch, the data pipeline), importing the encoder registry, loading
a random ECAPA-TDNN C=128 from its encoder.pt; then the wall time of an `extract` whose output is
already complete (nothing to embed: checks, checksum, store attributes). CPU seconds
(``time.process_time``) are reported beside wall seconds because on a shared machine the wall time
of start-up mostly measures the other jobs. Medians of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PHASES = """
import json, sys, time
t = [time.process_time()]
import spkemb.cli.app
t.append(time.process_time())
import spkemb.embeddings.extract
t.append(time.process_time())
from spkemb.models.io import load_encoder
t.append(time.process_time())
load_encoder(sys.argv[1])
t.append(time.process_time())
print(json.dumps([b - a for a, b in zip(t, t[1:])] + [sum(m in sys.modules for m in ("scipy.signal", "sympy"))]))
"""
NAMES = ("import spkemb.cli.app", "import spkemb.embeddings.extract", "import spkemb.models.io", "load_encoder")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        setup = (
            "import sys; from spkemb.models import build_encoder, save_encoder; "
            "from spkemb.data.synthetic import make_corpus; from spkemb.data.prepare import prepare_manifest; "
            "save_encoder(build_encoder('ecapa', channels=128), sys.argv[1] + '/encoder.pt'); "
            "make_corpus(sys.argv[1] + '/c', n_speakers=2, utts_per_speaker=2, seconds=(1.0, 1.5)); "
            "prepare_manifest([sys.argv[1] + '/c'], output=sys.argv[1] + '/m.tsv')"
        )
        subprocess.run([sys.executable, "-c", setup, tmp], check=True, env=env)
        runs = [
            json.loads(
                subprocess.run(
                    [sys.executable, "-c", PHASES, tmp], check=True, env=env, capture_output=True, text=True
                ).stdout
            )
            for _ in range(a.repeats)
        ]
        extract = [sys.executable, "-m", "spkemb", "extract", tmp, f"{tmp}/m.tsv", "-o", f"{tmp}/e.h5"]
        subprocess.run(extract, check=True, env=env, capture_output=True)
        walls = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            subprocess.run(extract, check=True, env=env, capture_output=True)
            walls.append(time.perf_counter() - t0)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; medians of {a.repeats} runs")
    for k, name in enumerate(NAMES):
        print(f"  {name:34s} {statistics.median(r[k] for r in runs):5.2f} CPU-s")
    print(
        f"  {'total before the first file':34s} {statistics.median(sum(r[:4]) for r in runs):5.2f} CPU-s"
        f"  (scipy.signal, sympy loaded: {runs[0][4]} of 2)"
    )
    print(f"  {'extract onto a complete store':34s} {statistics.median(walls):5.2f} s wall")


if __name__ == "__main__":
    main()
