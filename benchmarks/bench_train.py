"""Training and data-pipeline throughput on LibriSpeech train-clean-100, in crops per second.

    python benchmarks/bench_train.py [--methods moco simclr cel dino] [--steps 6] [--channels 256]
    python benchmarks/bench_train.py --levers [NAME ...] [--steps 10]
    python benchmarks/bench_train.py --vs-speechbrain [--steps 6] [--warmup 2] [--peer-python PY]

``--vs-speechbrain``: one training step of spkemb against SpeechBrain 1.1.2, side by side (see
``train_vs_speechbrain.py``).

For each method: optimiser steps of the real Trainer (bf16 autocast on the CPU, 1 worker) with and
without noise augmentation; and the loader alone (0 and 2 workers), which must feed far more crops
than the model consumes so that a GPU run is not starved. ``--levers``: CEL's step speed with one
setting changed at a time from the CPU config (precision, torch.compile, threads, loader worker,
allocator, channels, batch, crop length), each in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import corpora_root  # noqa: E402

from spkemb.augment.chain import from_options  # noqa: E402
from spkemb.data.crops import CropDataset, measure_loader  # noqa: E402
from spkemb.data.layouts import scan  # noqa: E402
from spkemb.methods import method_views  # noqa: E402
from spkemb.train.config import merge_config  # noqa: E402
from spkemb.train.pretrain import run_pretrain  # noqa: E402


def train_speed(utts: list, overrides: dict, steps: int, skip: int = 2) -> float:
    """Mean crops/s of the real Trainer over steps ``skip+1..steps`` (start-up and first batches skipped)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = merge_config(
            {}, {"encoder": "ecapa", "max_steps": steps, "checkpoint_every": 10_000, "log_every": 1, **overrides}
        )
        run_pretrain(utts, cfg, tmp)
        lines = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return sum(x["crops_per_s"] for x in lines[skip:]) / max(1, len(lines[skip:]))


# One lever changed at a time from the CPU configs' CEL setting (C=256, batch 64, two 2-s crops, bf16,
# 2 threads, loading in the main process, glibc allocator tuned, eager).
BASE = {
    "method": "cel",
    "encoder_kwargs": {"channels": 256},
    "batch_size": 64,
    "precision": "bf16",
    "num_workers": 0,
    "method_options": {"crop_seconds": 2.0},
}
LEVERS: dict[str, dict] = {
    "base": {},
    "fp32": {"precision": "fp32"},
    "compile": {"compile": True},
    "1-thread": {},
    "1-loader-worker": {"num_workers": 1},
    "untuned-allocator": {},
    "allocator-trim-1g": {},
    "channels-512": {"encoder_kwargs": {"channels": 512}},
    "batch-32": {"batch_size": 32},
    "batch-128": {"batch_size": 128},
    "crops-3s": {"method_options": {"crop_seconds": 3.0}},
}


def lever_speed(name: str, utts: list, steps: int) -> float:
    """crops/s with one lever changed (run in a fresh process: threads, allocator and compile caches)."""
    if name == "1-thread":
        torch.set_num_threads(1)
    if name == "untuned-allocator":
        import spkemb.utils.runtime

        spkemb.utils.runtime.tune_cpu_allocator = lambda *a, **k: False
    if name == "allocator-trim-1g":  # the earlier setting: mmap and trim thresholds at 1 GiB
        import ctypes

        import spkemb.utils.runtime

        libc = ctypes.CDLL("libc.so.6")
        spkemb.utils.runtime.tune_cpu_allocator = lambda *a, **k: bool(
            libc.mallopt(-3, 1 << 30) + libc.mallopt(-1, 1 << 30)
        )
    return train_speed(utts, {**BASE, **LEVERS[name]}, steps, skip=4 if name == "compile" else 2)


def levers(utts: list, steps: int, names: list[str]) -> dict[str, float]:
    out = {}
    for name in names:
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, __file__, "--lever", name, "--steps", str(steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[name] = json.loads(res.stdout.splitlines()[-1])["crops_per_s"]
        print(
            f"lever {name:18s} {out[name]:7.1f} crops/s  x{out[name] / out.get('base', out[name]):.2f} "
            f"({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["moco", "simclr", "cel", "dino"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--levers",
        nargs="*",
        metavar="NAME",
        help=f"instead: one-at-a-time levers on CEL ({', '.join(LEVERS)}; none named = all)",
    )
    ap.add_argument("--lever", help=argparse.SUPPRESS)  # one lever, in a child process
    ap.add_argument("--vs-speechbrain", action="store_true", help="instead: a step against SpeechBrain's")
    a, rest = ap.parse_known_args()
    if a.vs_speechbrain:
        from train_vs_speechbrain import main as vs_main

        vs_main([x for x in sys.argv[1:] if x != "--vs-speechbrain"])  # its own options (--channels: 512)
        return
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    torch.set_num_threads(a.threads)
    root = corpora_root()
    utts, _ = scan(root / "librispeech-samples" / "train-clean-100")
    if a.lever:
        print(json.dumps({"lever": a.lever, "crops_per_s": round(lever_speed(a.lever, utts, a.steps), 1)}))
        return
    if a.levers is not None:
        print(json.dumps({"steps": a.steps, "levers_crops_per_s": levers(utts, a.steps, a.levers or list(LEVERS))}))
        return
    noise = [str(root / "noise" / "speech-commands-background")]
    out: dict = {
        "channels": a.channels,
        "batch": a.batch,
        "precision": a.precision,
        "train_crops_per_s": {},
        "loader_crops_per_s": {},
    }
    for m in a.methods:
        for aug in (False, True):
            t0 = time.perf_counter()
            speed = train_speed(
                utts,
                {
                    "method": m,
                    "encoder_kwargs": {"channels": a.channels},
                    "batch_size": a.batch,
                    "precision": a.precision,
                    "num_workers": 1,
                    "data_options": {"noise": noise} if aug else {},
                },
                a.steps,
            )
            out["train_crops_per_s"][f"{m}{'+noise' if aug else ''}"] = round(speed, 1)
            print(
                f"train {m:7s} aug={aug!s:5s} {speed:7.1f} crops/s ({time.perf_counter() - t0:.0f} s)", file=sys.stderr
            )
    aug = from_options(noise_dirs=noise, sample_rate=16000)
    for name, augmenter in (("plain", None), ("noise", aug)):
        ds = CropDataset(utts, 16000, method_views("simclr"), augmenter=augmenter, seed=0)
        for workers in (0, 2):
            speed = measure_loader(ds, 64, workers, 8.0)
            out["loader_crops_per_s"][f"{name}-w{workers}"] = round(speed, 1)
            print(f"loader {name:6s} workers={workers} {speed:7.1f} crops/s", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
