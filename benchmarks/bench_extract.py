"""Extraction against its ceiling: per-stage seconds, pipeline / forward, and the forward against matmul peak.

    python benchmarks/bench_extract.py [--threads 2] [--repeats 3] [--precisions fp32 bf16 int8]

Runs ``extract_embeddings`` (what ``spkemb extract`` runs) on LibriSpeech test-other (100 utterances,
767 audio-s) with a random ECAPA-TDNN C=512, the precisions interleaved (fp32, bf16, ..., fp32, bf16,
...) so that they share the machine's load, and times each stage in place: decode (in the
caller's thread, between forwards, as ``extract`` does on the CPU), fbank, the encoder's forward
(the model less its fbank), HDF5 writes, and the rest (collation, padding, Python). ``pipeline`` is
the wall time less the forward; the target is pipeline / forward <= 0.10. The forward's GFLOP/s (FLOPs counted by
``torch.utils.flop_counter`` on the real batches' shapes) is set against a 4096 x 4096 matmul's on
the same cores, in the same precision (1024 x 1024 where bf16 runs emulated: a 4096 product takes
minutes there). Prints the CPU model, its vector/matrix flags and the load average before and after,
and the cosine of bf16 (and int8) embeddings to fp32.
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
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import corpora_root  # noqa: E402

import spkemb.audio as audio_mod  # noqa: E402
import spkemb.embeddings.extract as ex  # noqa: E402
from spkemb.data.layouts import scan  # noqa: E402
from spkemb.embeddings.store import StoreWriter, read_embeddings  # noqa: E402
from spkemb.models import build_encoder  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def machine() -> dict[str, Any]:
    """CPU model, the flags that decide GEMM speed, cores, load average."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": model,
        "flags": [f for f in FLAGS if f in flags],
        "cores": os.cpu_count(),
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def matmul_gflops(dtype: torch.dtype, n: int = 4096, reps: int = 5) -> tuple[float, int]:
    """GFLOP/s of an n x n matmul and the n used: 1024 where a 1024 probe runs below 20 GFLOP/s (bf16
    emulated on a CPU without bf16 instructions: a 4096 product there takes minutes)."""
    probe = _matmul_seconds(dtype, 1024, 1)
    if 2 * 1024**3 / probe / 1e9 < 20:
        n, reps = 1024, 3
    return 2 * n**3 / _matmul_seconds(dtype, n, reps) / 1e9, n


def _matmul_seconds(dtype: torch.dtype, n: int, reps: int) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class Stages:
    """Seconds per stage, by wrapping (once) the functions that do each; :meth:`reset` between runs."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self._wrap(audio_mod, "_read", "decode")
        self._wrap(audio_mod, "resample", "resample")
        self._wrap(StoreWriter, "write", "hdf5 write")
        self._wrap(ex, "embed_batch", "embed_batch")
        if hasattr(model, "frontend"):  # (the int8 graph's fbank runs inside onnxruntime: counted as forward)
            self._wrap(model.frontend, "forward", "fbank")

    def reset(self) -> None:
        self.t.clear()

    def _wrap(self, obj: Any, name: str, key: str) -> None:
        real: Callable = getattr(obj, name)

        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                self.t[key] += time.perf_counter() - t

        setattr(obj, name, timed)


def encoder_flops(model: torch.nn.Module, seconds: float = 6.0, batch: int = 8) -> float:
    """FLOPs of the forward per audio-second (fbank excluded: it is no matrix product)."""
    from torch.utils.flop_counter import FlopCounterMode

    import spkemb.models.ecapa as ecapa_mod

    x = torch.randn(batch, int(seconds * 16000)) * 0.1
    fused, ecapa_mod._LINEAR_POINTWISE = ecapa_mod._LINEAR_POINTWISE, None  # (oneDNN's op is not counted)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        ecapa_mod._LINEAR_POINTWISE = fused
    return fc.get_total_flops() / (batch * seconds)


def forward_alone(model: torch.nn.Module, prec: str, seconds: float = 6.0, batch: int = 8, reps: int = 3) -> float:
    """Audio-seconds per second of the encoder (fbank included) on equal-length batches: no padding, no I/O."""
    x = torch.randn(batch, int(seconds * 16000)) * 0.1
    dev = torch.device("cpu")
    with torch.inference_mode():
        with ex.autocast(dev, prec):
            model(x)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            with ex.autocast(dev, prec):
                model(x)
            times.append(time.perf_counter() - t)
    return batch * seconds / min(times)


def run_once(
    model: torch.nn.Module, utts: list, prec: str, tmp: Path, stages: Stages
) -> tuple[dict[str, float], np.ndarray]:
    """One extraction; int8 takes the quantised encoder (its quantisation, done once, is not timed)."""
    stages.reset()
    out = tmp / f"{prec}.h5"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    res = ex.extract_embeddings(model, utts, out, {}, ex.ExtractOptions(precision=prec, device="cpu"))
    wall = time.perf_counter() - t0
    t = {"fbank": 0.0, **stages.t}
    fwd = t.pop("embed_batch") - t["fbank"]
    row = {"wall": wall, "forward": fwd, **t}
    row["rest (collate, Python)"] = wall - fwd - sum(t.values())
    row["pipeline"] = wall - fwd
    return row, read_embeddings(res.path).vectors


def speechbrain_speed(exe: str, files: list[str], channels: int, threads: int) -> dict[str, Any]:
    """SpeechBrain's pipeline at batch 1, in its own venv and process (benchmarks/sb_pipeline_speed.py)."""
    cfg = json.dumps({"files": files, "channels": channels, "threads": threads, "repeats": 2})
    script = str(Path(__file__).resolve().parent / "sb_pipeline_speed.py")
    try:
        res = subprocess.run([exe, script, cfg], capture_output=True, text=True, timeout=1200)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"skipped": str(err)}
    if res.returncode != 0:
        return {"skipped": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--limit", type=int, default=100, help="utterances of test-other to use")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument(
        "--peer-python",
        default=os.environ.get("SPKEMB_SB_PYTHON", "/work/venvs/sb/bin/python"),
        help="SpeechBrain 1.1.2's venv python, for its batch-1 pipeline as the outside reference ('' skips it)",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    before = machine()
    print(f"{before['cpu']}, {before['cores']} cores, flags {' '.join(before['flags'])}, load {before['load']}")
    utts, _ = scan(corpora_root() / "librispeech-samples" / "test-other")
    utts = utts[: a.limit]
    audio = sum(u.duration for u in utts)
    torch.manual_seed(0)
    ecapa = build_encoder("ecapa", channels=a.channels).eval()
    gflop_per_audio_s = encoder_flops(ecapa) / 1e9
    models = {p: ecapa for p in a.precisions}
    if "int8" in a.precisions:
        from spkemb.embeddings.quantize import quantize_int8

        models["int8"] = quantize_int8(ecapa, a.threads)
    stages = Stages(ecapa)
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    vecs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeats):
            for prec in a.precisions:
                row, vecs[prec] = run_once(models[prec], utts, prec, Path(tmp), stages)
                row["forward alone"] = forward_alone(models[prec], prec)  # (just after, under the same load)
                rows[prec].append(row)
    report: dict[str, Any] = {
        "machine": before,
        "utterances": len(utts),
        "audio_s": round(audio, 1),
        "threads": a.threads,
        "gflop_per_audio_s": round(gflop_per_audio_s, 3),
        "precisions": {},
    }
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}
    for prec in a.precisions:
        best = min(rows[prec], key=lambda r: r["wall"])
        peak, peak_n = matmul_gflops(dtypes[prec])
        fwd_speed = audio / best["forward"]
        alone = max(r.pop("forward alone") for r in rows[prec])
        entry = {
            "stages_s": {k: round(v, 3) for k, v in best.items()},
            "extract_audio_s_per_s": round(audio / best["wall"], 1),
            "forward_in_extract_audio_s_per_s": round(fwd_speed, 1),
            "forward_alone_8x6s_audio_s_per_s": round(alone, 1),
            "pipeline_over_forward": round(best["pipeline"] / best["forward"], 3),
            # all that extract adds to the unpadded forward, padding waste included
            "wall_over_forward_alone_minus_1": round(best["wall"] * alone / audio - 1, 3),
            "matmul_gflops": round(peak, 1),
            "matmul_n": peak_n,
            "forward_fraction_of_matmul_peak": round(fwd_speed * gflop_per_audio_s / peak, 3),
        }
        if prec != "fp32" and "fp32" in vecs:
            f, b = vecs["fp32"], vecs[prec]
            cos = (f * b).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(b, axis=1)
            entry["cosine_to_fp32_min"] = round(float(cos.min()), 5)
        report["precisions"][prec] = entry
        print(f"{prec}: " + ", ".join(f"{k} {v:.2f}" for k, v in best.items()), file=sys.stderr)
    if a.peer_python:
        peer = speechbrain_speed(a.peer_python, [str(u.path) for u in utts], a.channels, a.threads)
        report["speechbrain_batch1"] = peer
        if peer.get("audio_s_per_s"):
            for entry in report["precisions"].values():
                entry["x_speechbrain"] = round(entry["extract_audio_s_per_s"] / peer["audio_s_per_s"], 2)
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
