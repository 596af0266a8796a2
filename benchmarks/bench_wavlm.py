"""Extraction speed and peak memory of WavLM-Base+ + MHFA (random weights) on the CPU, fp32 and bf16,
against ECAPA-TDNN C=512 in the same run.

    python benchmarks/bench_wavlm.py [--threads 2] [--utterances 20]

Each configuration runs in its own process (so ``ru_maxrss``, the peak resident memory, is its own):
build the encoder, then ``extract_embeddings`` (decode + encoder + HDF5 write, extract's defaults:
WavLM utterances longer than ``max_seconds`` = 20 s are embedded in 20-s windows) over the first N
utterances of LibriSpeech test-other. Prints one JSON line; the machine's load average (``uptime``)
is recorded before and after, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
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
from spkemb.models import build_encoder, describe_encoder  # noqa: E402

ENCODERS = {"wavlm-base-plus-mhfa": ("wavlm-mhfa", {"size": "base-plus"}), "ecapa512": ("ecapa", {"channels": 512})}
RUNS = [("ecapa512", "fp32"), ("ecapa512", "bf16"), ("wavlm-base-plus-mhfa", "fp32"), ("wavlm-base-plus-mhfa", "bf16")]


def one(name: str, precision: str, n_utts: int, threads: int, out: Path) -> dict:
    """Extract with one encoder at one precision (in this process); the embeddings go to ``out``."""
    torch.set_num_threads(threads)
    utts, _ = scan(corpora_root() / "librispeech-samples" / "test-other")
    utts = sorted(utts, key=lambda u: u.utt_id)[:n_utts]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # python + torch + spkemb imported
    torch.manual_seed(0)
    kind, kwargs = ENCODERS[name]
    model = build_encoder(kind, **kwargs).eval()
    opts = ExtractOptions(precision=precision, device="cpu")
    extract_embeddings(model, utts[:1], out.with_suffix(".warm.h5"), {}, opts)  # one-off start-up costs, untimed
    t0 = time.perf_counter()
    res = extract_embeddings(model, utts, out, {}, opts)
    wall = time.perf_counter() - t0
    audio = sum(u.duration for u in utts)
    params = describe_encoder(model)["parameters"]
    return {
        "encoder": name,
        "precision": precision,
        "parameters_M": round(params / 1e6, 1),
        "utterances": len(utts),
        "audio_s": round(audio, 1),
        "longest_s": round(max(u.duration for u in utts), 1),
        "wall_s": round(wall, 1),
        "audio_s_per_s": round(audio / wall, 2),
        "written": res.written,
        "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_model_MiB": round(base_rss),
    }


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--utterances", type=int, default=20)
    ap.add_argument("--one", nargs=3, metavar=("ENCODER", "PRECISION", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], a.utterances, a.threads, Path(a.one[2]))))
        return
    before = load()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, prec in RUNS:
            out = Path(tmp) / f"{name}-{prec}.h5"
            cmd = [
                sys.executable,
                __file__,
                "--threads",
                str(a.threads),
                "--utterances",
                str(a.utterances),
                "--one",
                name,
                prec,
                str(out),
            ]
            row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            print(
                f"{name:22s} {prec}: {row['audio_s_per_s']:7.2f} audio-s/s, peak {row['peak_rss_MiB']} MiB",
                file=sys.stderr,
            )
            rows.append(row)
        f, b = (read_embeddings(Path(tmp) / f"wavlm-base-plus-mhfa-{p}.h5").vectors for p in ("fp32", "bf16"))
    # A random network's embeddings share a large common part; the centred cosine (the fp32 mean over
    # the utterances removed from both) shows whether bf16 keeps what tells utterances apart.
    centred = [f - f.mean(0), b - f.mean(0)]
    print(
        json.dumps(
            {
                "threads": a.threads,
                "load_before": before,
                "load_after": load(),
                "runs": rows,
                "wavlm_bf16_vs_fp32_cosine_min": round(float(_cos(f, b).min()), 4),
                "wavlm_bf16_vs_fp32_centred_cosine_min": round(float(_cos(*centred).min()), 4),
            }
        )
    )


def _cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)


if __name__ == "__main__":
    main()
