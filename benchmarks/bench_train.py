"""Training and data-pipeline throughput on LibriSpeech train-clean-100, in crops per second.

    python benchmarks/bench_train.py [--methods moco simclr cel dino] [--steps 6] [--channels 256]

For each method: optimiser steps of the real Trainer (bf16 autocast on the CPU, 1 worker) with and
without noise augmentation; and the loader alone (0 and 2 workers), which must feed far more crops
than the model consumes so that a GPU run is not starved.
"""

from __future__ import annotations

import argparse
import json
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


def train_speed(utts: list, method: str, channels: int, batch: int, steps: int, noise: list[str],
                precision: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = merge_config({}, {"method": method, "encoder": "ecapa", "encoder_kwargs": {"channels": channels},
                                "batch_size": batch, "max_steps": steps, "precision": precision,
                                "num_workers": 1, "checkpoint_every": 10_000, "log_every": 1,
                                "data_options": {"noise": noise} if noise else {}})
        run_pretrain(utts, cfg, tmp)
        lines = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    # Skip the first two steps (start-up, first-batch latency); crops/s over the rest.
    return sum(x["crops_per_s"] for x in lines[2:]) / max(1, len(lines[2:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["moco", "simclr", "cel", "dino"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    root = corpora_root()
    utts, _ = scan(root / "librispeech-samples" / "train-clean-100")
    noise = [str(root / "noise" / "speech-commands-background")]
    out: dict = {"channels": a.channels, "batch": a.batch, "precision": a.precision, "train_crops_per_s": {},
                 "loader_crops_per_s": {}}
    for m in a.methods:
        for aug in (False, True):
            t0 = time.perf_counter()
            speed = train_speed(utts, m, a.channels, a.batch, a.steps, noise if aug else [], a.precision)
            out["train_crops_per_s"][f"{m}{'+noise' if aug else ''}"] = round(speed, 1)
            print(f"train {m:7s} aug={aug!s:5s} {speed:7.1f} crops/s ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
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
