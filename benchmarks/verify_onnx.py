"""ONNX export against torch on real speech: cosine of onnxruntime's embeddings to torch's, several lengths.

    python benchmarks/verify_onnx.py [--encoders ecapa resnet34 tdnn] [--threads 2] [--limit 100]

For each encoder (random weights, the registry's default options), ``export_onnx`` writes the graph,
then every utterance of LibriSpeech test-other is embedded by torch and by onnxruntime: whole, cut
to 1 s, 3 s and 10 s, and as padded batches (a long row beside a short one). Prints the minimum and
mean cosine per encoder and the number of embeddings compared; fails (exit 1) below 0.9999.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import corpora_root  # noqa: E402

from spkemb.audio import load_audio  # noqa: E402
from spkemb.data.layouts import scan  # noqa: E402
from spkemb.embeddings.onnx_runner import session  # noqa: E402
from spkemb.models import build_encoder  # noqa: E402
from spkemb.models.onnx_export import MIN_COSINE, export_onnx  # noqa: E402

CUTS = (None, 1.0, 3.0, 10.0)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))


def verify(name: str, waves: list[np.ndarray], threads: int, tmp: Path) -> dict[str, object]:
    torch.manual_seed(0)
    enc = build_encoder(name).eval()
    sr = int(enc.sample_rate)
    path = export_onnx(enc, tmp / f"{name}.onnx", threads=threads).path
    sess = session(path, threads)
    cosines: list[float] = []
    pieces = [w if cut is None else w[: int(cut * sr)] for w in waves for cut in CUTS]
    for i in range(0, len(pieces), 2):  # pairs: a padded batch of two, as extract batches them
        batch = pieces[i : i + 2]
        n = max(len(p) for p in batch)
        wav = np.zeros((len(batch), n), np.float32)
        for j, p in enumerate(batch):
            wav[j, : len(p)] = p
        lengths = np.array([len(p) for p in batch], np.int64)
        with torch.no_grad():
            want = enc(torch.from_numpy(wav), torch.from_numpy(lengths)).float().numpy()
        got = sess.run(None, {"waveform": wav, "lengths": lengths})[0]
        cosines += _cos(want, got).tolist()
    c = np.asarray(cosines)
    return {"encoder": name, "embeddings": len(c), "min_cosine": round(float(c.min()), 7),
            "mean_cosine": round(float(c.mean()), 7), "onnx_mb": round(path.stat().st_size / 1e6, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", nargs="+", default=["ecapa", "resnet34", "tdnn"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=100, help="utterances of test-other to use")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    utts, _ = scan(corpora_root() / "librispeech-samples" / "test-other")
    utts = utts[: a.limit]
    waves = [load_audio(u.path, 16000) for u in utts]
    print(f"{platform.processor() or platform.machine()}; {subprocess.getoutput('uptime')}", file=sys.stderr)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.encoders:
            row = verify(name, [np.asarray(w, np.float32) for w in waves], a.threads, Path(tmp))
            row["utterances"] = len(utts)
            ok &= float(row["min_cosine"]) >= MIN_COSINE  # type: ignore[arg-type]
            print(json.dumps(row), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
