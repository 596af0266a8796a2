"""Extraction throughput: decode + fbank + encoder + HDF5 write, in audio-seconds per wall-second.

    python benchmarks/bench_extract.py [--threads 2] [--workers 1] [--repeats 2]

Runs on LibriSpeech test-other (100 utterances, 13 min) with a random ECAPA-TDNN C=512 in fp32
and bf16 autocast, and the MFCC baseline; also reports the cosine between bf16 and fp32 embeddings.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import corpora_root  # noqa: E402

from spkemb.data.layouts import scan  # noqa: E402
from spkemb.embeddings.extract import ExtractOptions, extract_embeddings  # noqa: E402
from spkemb.embeddings.store import read_embeddings  # noqa: E402
from spkemb.models import build_encoder  # noqa: E402


def run(model: torch.nn.Module, utts: list, out: Path, opts: ExtractOptions) -> tuple[float, np.ndarray]:
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    res = extract_embeddings(model, utts, out, {}, opts)
    wall = time.perf_counter() - t0
    return sum(u.duration for u in utts) / wall, read_embeddings(res.path).vectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="default: extract's own (0 on the CPU)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--channels", type=int, default=512)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    utts, _ = scan(corpora_root() / "librispeech-samples" / "test-other")
    hours = sum(u.duration for u in utts) / 3600
    torch.manual_seed(0)
    ecapa = build_encoder("ecapa", channels=a.channels).eval()
    mfcc = build_encoder("mfcc-stats").eval()
    results: dict[str, float] = {}
    vecs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, prec in (
            ("mfcc-stats", mfcc, "fp32"),
            (f"ecapa{a.channels}-fp32", ecapa, "fp32"),
            (f"ecapa{a.channels}-bf16", ecapa, "bf16"),
        ):
            opts = ExtractOptions(workers=a.workers, precision=prec, device="cpu")
            best = 0.0
            for _ in range(a.repeats):
                speed, v = run(model, utts, Path(tmp) / "e.h5", opts)
                best = max(best, speed)
            results[name] = round(best, 1)
            vecs[name] = v
            print(f"{name:18s} {best:7.1f} audio-s/s", file=sys.stderr)
    f, b = vecs[f"ecapa{a.channels}-fp32"], vecs[f"ecapa{a.channels}-bf16"]
    cos = (f * b).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(b, axis=1)
    print(
        json.dumps(
            {
                "utterances": len(utts),
                "hours": round(hours, 3),
                "threads": a.threads,
                "workers": a.workers,
                "audio_s_per_s": results,
                "bf16_vs_fp32_cosine_min": round(float(cos.min()), 5),
                "bf16_vs_fp32_cosine_mean": round(float(cos.mean()), 5),
            }
        )
    )


if __name__ == "__main__":
    main()
