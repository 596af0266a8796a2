"""The pseudo-label loop's steps at VoxCeleb2 size: time and peak memory of each command as N grows.

    python benchmarks/scale.py [--n 10000 100000 1092009] [--steps cluster score prepare] [--work DIR]
                               [--device auto] [--trials 10000000] [--cold]

For each N it synthesises (once, into WORK/N/):
  * ``emb.h5``: N x 192 embeddings of 5,994 x N / 1,092,009 speakers (VoxCeleb2's 182 utterances per
    speaker), written with spkemb's store writer: unit speaker centres plus per-utterance noise of a
    per-speaker spread, so that same-speaker cosines are about 0.5-0.7 and others about 0 +- 0.07, as
    for a trained ECAPA;
  * ``vox/``: a VoxCeleb2 layout ``idNNNNN/SESSION/NNNNN.wav`` of N tiny WAV files (0.1 s at 8 kHz);
  * ``trials.txt``: a VoxCeleb-style ``label enroll test`` list (``--trials`` lines, 10M by default)
    over the store's utterances.
Then it runs, each in a child process whose wall time and peak RSS (``ru_maxrss``, via wait4) are
printed: ``spkemb cluster --method two-stage`` to 50,000 x N / 1.09M then 7,500 x N / 1.09M clusters
(the seed's counts at full size), ``spkemb score`` of the trials (only for the largest N; its cost
grows with the trials, not N), and ``spkemb prepare`` of the layout. One JSON line per step on stdout,
with the CPU model, its vector flags and the load (``os.getloadavg``) before and after. ``--cold``
drops the kernel's page, dentry and inode caches before each prepare (as root), so that it reads every
header from the disk, as for a corpus not touched for a while.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VOX2_UTTS = 1_092_009
VOX2_SPEAKERS = 5_994
SEED_INIT, SEED_FINAL = 50_000, 7_500
DIM = 192
ROOT = Path(__file__).resolve().parent.parent


def cpu() -> dict[str, object]:
    model, flags = platform.processor() or "?", []
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name"))
        all_flags = next(ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags"))
        flags = [f for f in all_flags if f.startswith(("avx", "amx", "fma"))]
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "flags": flags}


def speakers_for(n: int) -> int:
    return max(2, round(VOX2_SPEAKERS * n / VOX2_UTTS))


def ids_for(n: int, n_spk: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    truth = np.sort(rng.integers(n_spk, size=n))
    ids, count = [], np.zeros(n_spk, int)
    for t in truth:
        i = count[t]
        count[t] += 1
        ids.append(f"id{t:05d}/s{i // 8:04d}/{i % 8:05d}.wav")
    return ids, truth


def synth_store(path: Path, n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    from spkemb.embeddings.store import write_embeddings

    rng = np.random.default_rng(seed)
    n_spk = speakers_for(n)
    ids, truth = ids_for(n, n_spk, rng)
    centres = rng.standard_normal((n_spk, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.6, 1.1, n_spk).astype(np.float32) / np.sqrt(DIM)  # |noise| ~ 0.6..1.1
    x = np.empty((n, DIM), np.float32)
    for s in range(0, n, 200_000):
        t = truth[s : s + 200_000]
        x[s : s + len(t)] = centres[t] + spread[t, None] * rng.standard_normal((len(t), DIM), dtype=np.float32)
    write_embeddings(path, ids, x, speakers=[f"id{t:05d}" for t in truth])
    return ids, truth


def wav_bytes(seconds: float = 0.1, rate: int = 8000) -> bytes:
    frames = int(seconds * rate)
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate, 1, 8)
    head = b"RIFF" + struct.pack("<I", 36 + frames) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", frames)
    return head + b"\x80" * frames


def synth_layout(root: Path, ids: list[str]) -> None:
    if (root / ".done").exists():
        return
    data = wav_bytes()
    made: set[str] = set()
    for u in ids:
        d = u.rsplit("/", 1)[0]
        if d not in made:
            (root / d).mkdir(parents=True, exist_ok=True)
            made.add(d)
        with open(root / u, "wb") as f:
            f.write(data)
    (root / ".done").write_text("")


def synth_trials(path: Path, ids: list[str], truth: np.ndarray, count: int, seed: int = 1) -> None:
    if path.exists():
        return
    rng = np.random.default_rng(seed)
    arr = np.asarray(ids)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for s in range(0, count, 1_000_000):
            m = min(1_000_000, count - s)
            a, b = rng.integers(len(ids), size=m), rng.integers(len(ids), size=m)
            lab = (truth[a] == truth[b]).astype(int)
            f.writelines(f"{label} {x} {y}\n" for label, x, y in zip(lab, arr[a], arr[b], strict=True))
    tmp.rename(path)


def drop_caches() -> str:
    """Write back and drop the page, dentry and inode caches so that prepare reads from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as err:
        print(f"--cold: cannot drop the caches ({err.strerror}; needs root): this run is warm", file=sys.stderr)
        return "warm (dropping the caches was refused)"
    return "cold (caches dropped)"


def run(step: str, n: int, args: list[str], log: Path) -> dict[str, object]:
    """One `spkemb ARGS` in a child: wall seconds, peak RSS, exit status, the load before and after."""
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with open(log, "w") as err, open(log.with_suffix(".out"), "w") as out:
        child = subprocess.Popen([sys.executable, "-m", "spkemb", *args], stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    row: dict[str, object] = {
        "step": step,
        "n": n,
        "rc": os.waitstatus_to_exitcode(status),
        "seconds": round(wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "load_before": [round(v, 1) for v in load0],
        "load_after": [round(v, 1) for v in os.getloadavg()],
        "command": "spkemb " + " ".join(args),
    }
    if step == "cluster" and row["rc"] == 0:
        s = json.loads(log.with_suffix(".out").read_text())
        row.update({k: s.get(k) for k in ("nmi", "ari", "purity", "n_clusters", "kmeans", "stage_seconds")})
    if row["rc"]:
        row["stderr_tail"] = log.read_text()[-600:]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, VOX2_UTTS])
    steps = ["cluster", "score", "prepare"]
    ap.add_argument("--steps", nargs="+", default=steps, choices=steps)
    ap.add_argument("--work", type=Path, default=Path("/tmp/spkemb-scale"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--trials", type=int, default=10_000_000)
    ap.add_argument(
        "--cold",
        action="store_true",
        help="prepare with a cold page cache: `sync` and drop the kernel's caches first (needs root)",
    )
    ap.add_argument("--cluster-args", default="", help="extra `spkemb cluster` options, e.g. '--ahc exact'")
    args = ap.parse_args()
    print(json.dumps({"machine": cpu(), "load": os.getloadavg()}), flush=True)
    for n in sorted(args.n):
        here = args.work / str(n)
        here.mkdir(parents=True, exist_ok=True)
        store = here / "emb.h5"
        t0 = time.perf_counter()
        if not store.exists():
            ids, truth = synth_store(store, n)
        else:
            rng = np.random.default_rng(0)
            ids, truth = ids_for(n, speakers_for(n), rng)
        made = {"synthesised": str(store), "n": n, "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(made), flush=True)
        if "cluster" in args.steps:
            m = max(2, round(SEED_INIT * n / VOX2_UTTS))
            k = max(2, round(SEED_FINAL * n / VOX2_UTTS))
            cmd = ["cluster", str(store), "-o", str(here / "labels.tsv"), "--method", "two-stage"]
            cmd += ["--n-init-clusters", str(m), "--n-clusters", str(k), "--device", args.device, "--json"]
            cmd += args.cluster_args.split()
            print(json.dumps(run("cluster", n, cmd, here / "cluster.log")), flush=True)
        if "score" in args.steps and n == max(args.n):
            synth_trials(here / "trials.txt", ids, truth, args.trials)
            cmd = ["score", str(here / "trials.txt"), str(store), "-o", str(here / "scores.txt")]
            print(json.dumps({**run("score", n, cmd, here / "score.log"), "trials": args.trials}), flush=True)
        if "prepare" in args.steps:
            t0 = time.perf_counter()
            synth_layout(here / "vox", ids)
            print(json.dumps({"layout": n, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
            (here / "manifest.tsv").unlink(missing_ok=True)
            cache = drop_caches() if args.cold else "as found (not dropped)"
            cmd = ["prepare", str(here / "vox"), "-o", str(here / "manifest.tsv"), "--layout", "voxceleb"]
            print(json.dumps({**run("prepare", n, cmd, here / "prepare.log"), "page_cache": cache}), flush=True)


if __name__ == "__main__":
    main()
