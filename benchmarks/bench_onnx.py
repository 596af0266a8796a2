"""`spkemb extract` speed with one encoder three ways, side by side in one run: torch fp32, torch bf16
autocast and onnxruntime fp32 (the graph of ``spkemb export-model --onnx``).

    python benchmarks/bench_onnx.py [--channels 512] [--threads 2] [--rounds 3] [--limit 100]

Each round runs the three in turn (so load from other jobs falls on all three alike) on LibriSpeech
test-other through the extraction loop itself (decode + features + encoder + HDF5 write, whole
utterances, the CLI's default batching); reports the median audio-seconds per wall-second, the
ratio to torch fp32, and the cosine of each one's embeddings to torch fp32's. Prints the CPU model,
its vector flags and ``uptime`` first.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
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
from spkemb.embeddings.onnx_runner import load_onnx_encoder  # noqa: E402
from spkemb.embeddings.store import read_embeddings  # noqa: E402
from spkemb.models import build_encoder  # noqa: E402
from spkemb.models.onnx_export import export_onnx  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")


def cpu_line() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    have = " ".join(f for f in FLAGS if f in flags) or "none of " + " ".join(FLAGS)
    return f"{model}; flags: {have}; {subprocess.getoutput('uptime').strip()}"


def run(model: torch.nn.Module, utts: list, out: Path, precision: str) -> tuple[float, np.ndarray]:
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    res = extract_embeddings(model, utts, out, {}, ExtractOptions(precision=precision, device="cpu"))
    wall = time.perf_counter() - t0
    return sum(u.duration for u in utts) / wall, read_embeddings(res.path).vectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=100)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(cpu_line(), file=sys.stderr, flush=True)
    utts, _ = scan(corpora_root() / "librispeech-samples" / "test-other")
    utts = utts[: a.limit]
    torch.manual_seed(0)
    enc = build_encoder("ecapa", channels=a.channels).eval()
    speeds: dict[str, list[float]] = {"torch fp32": [], "torch bf16": [], "onnxruntime fp32": []}
    vecs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_onnx(enc, Path(tmp) / "ecapa.onnx", threads=a.threads).path
        ort_enc = load_onnx_encoder(onnx, "fp32", a.threads)
        runs = (("torch fp32", enc, "fp32"), ("torch bf16", enc, "bf16"), ("onnxruntime fp32", ort_enc, "fp32"))
        for r in range(a.rounds):
            for name, model, prec in runs:
                speed, v = run(model, utts, Path(tmp) / "e.h5", prec)
                speeds[name].append(speed)
                vecs[name] = v
                print(f"round {r + 1} {name:17s} {speed:7.1f} audio-s/s", file=sys.stderr, flush=True)
    base = statistics.median(speeds["torch fp32"])
    ref = vecs["torch fp32"]
    rows = {}
    for name, s in speeds.items():
        v = vecs[name]
        cos = (v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)
        rows[name] = {"median_audio_s_per_s": round(statistics.median(s), 1), "runs": [round(x, 1) for x in s],
                      "vs_torch_fp32": round(statistics.median(s) / base, 2),
                      "cosine_to_torch_fp32_min": round(float(cos.min()), 6)}  # fmt: skip
    print(json.dumps({"cpu": cpu_line(), "utterances": len(utts), "audio_s": round(sum(u.duration for u in utts), 1),
                      "encoder": f"ecapa C={a.channels} (random weights)", "threads": a.threads,
                      "results": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
