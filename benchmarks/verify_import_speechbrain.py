"""Issue 19 item 2 for SpeechBrain: `spkemb import-model speechbrain` + `spkemb extract` against SpeechBrain's
own code, on real speech.

For each C (1024, 512): SpeechBrain 1.1.2's ``ECAPA_TDNN`` (channels [C, C, C, C, 3C], 192-d) with random
weights (batch norm statistics randomised too) is saved as ``embedding_model.ckpt`` with a random
``mean_var_norm_emb.ckpt`` (no hyperparams.yaml: the dims come from the tensors' shapes). SpeechBrain
embeds each utterance with ``EncoderClassifier.encode_batch(wav, normalize=True)``'s steps (its
``Fbank(n_mels=80)``, sentence ``InputNormalization``, the model, the global embedding
``InputNormalization``); spkemb imports the folder and runs ``spkemb extract`` on the same files
(batched, padded). Prints the cosine of each pair's minimum and the count; every one must be >= 0.9999.

SpeechBrain runs in its own venv (``--peer-python``, default $SPKEMB_SB_PYTHON or /work/venvs/sb/bin/python:
``python3.11 -m venv /work/venvs/sb && /work/venvs/sb/bin/pip install speechbrain==1.1.2 torch==2.14.1
torchaudio==2.11.0 soundfile``). Skips (exit 0) with a message when the peer or the corpora are absent.

    .venv/bin/python benchmarks/verify_import_speechbrain.py [--utterances 100] [--channels 1024 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import corpora_root  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.9999

# Runs in SpeechBrain's venv: build, save in SpeechBrain's layout, embed with SpeechBrain's modules.
PEER = r"""
import json, sys
from pathlib import Path
import soundfile as sf
import torch
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.processing.features import InputNormalization

cfg = json.loads(sys.argv[1])
out = Path(cfg["folder"])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(cfg["seed"])
C = cfg["channels"]
model = ECAPA_TDNN(80, channels=[C, C, C, C, 3 * C], lin_neurons=192).eval()
with torch.no_grad():
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.weight.uniform_(0.5, 1.5); m.bias.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1); m.running_var.uniform_(0.5, 1.5)
torch.save(model.state_dict(), out / "embedding_model.ckpt")
emb_norm = InputNormalization(norm_type="global", std_norm=False)
emb_norm.glob_mean, emb_norm.glob_std, emb_norm.count = 0.1 * torch.randn(192), torch.ones(192), 1000
emb_norm._save(out / "mean_var_norm_emb.ckpt")
emb_norm.eval()
fbank, mean_var_norm = Fbank(n_mels=80), InputNormalization(norm_type="sentence", std_norm=False)
embeddings = {}
with torch.no_grad():
    for uid, path in cfg["utts"]:
        wav, sr = sf.read(path, dtype="float32")
        assert sr == 16000, path
        wavs, lens = torch.from_numpy(wav).unsqueeze(0), torch.ones(1)
        feats = mean_var_norm(fbank(wavs), lens)
        emb = emb_norm(model(feats, lens), torch.ones(1))
        embeddings[uid] = emb.reshape(-1)
torch.save(embeddings, out / "peer_embeddings.pt")
print(f"speechbrain: C={C}, {len(embeddings)} utterances embedded", file=sys.stderr)
"""


def peer_python(arg: str | None) -> str:
    exe = arg or os.environ.get("SPKEMB_SB_PYTHON") or "/work/venvs/sb/bin/python"
    probe = [exe, "-c", "import speechbrain, soundfile; print(speechbrain.__version__)"]
    try:
        res = subprocess.run(probe, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        res = None
    if res is None or res.returncode != 0:
        print(f"skipped: no SpeechBrain at {exe} (see this script's docstring)", file=sys.stderr)
        sys.exit(0)
    print(f"peer: speechbrain {res.stdout.strip()} ({exe})", file=sys.stderr)
    return exe


def utterances(corpora: Path, n: int) -> list[tuple[str, str]]:
    files = sorted((corpora / "librispeech-samples" / "test-other").rglob("*.flac"))[:n]
    return [(f.stem, str(f)) for f in files]


def write_manifest(utts: list[tuple[str, str]], path: Path) -> None:
    lines = ["utt_id\tpath\tspeaker\tduration\tsample_rate"]
    for uid, p in utts:
        info = sf.info(p)
        lines.append(f"{uid}\t{p}\t{uid.split('-')[0]}\t{info.frames / info.samplerate:.3f}\t{info.samplerate}")
    path.write_text("\n".join(lines) + "\n")


def spkemb(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "spkemb", *args], check=True, cwd=ROOT)


def verify(channels: int, utts: list[tuple[str, str]], exe: str, work: Path) -> tuple[float, int]:
    import torch

    from spkemb.embeddings.store import read_embeddings

    folder = work / f"sb-ecapa-c{channels}"
    cfg = {"folder": str(folder), "seed": channels, "channels": channels, "utts": utts}
    subprocess.run([exe, "-c", PEER, json.dumps(cfg)], check=True)
    encoder, store, manifest = work / f"c{channels}.pt", work / f"c{channels}.h5", work / "manifest.tsv"
    write_manifest(utts, manifest)
    spkemb("import-model", "speechbrain", str(folder), "-o", str(encoder), "--overwrite")
    spkemb("extract", str(encoder), str(manifest), "-o", str(store), "--device", "cpu", "--overwrite")
    ours = read_embeddings(store)
    peer = torch.load(folder / "peer_embeddings.pt", weights_only=True)
    index = ours.index()
    cos = []
    for uid, _ in utts:
        a = ours.vectors[index[uid]].astype(np.float64)
        b = peer[uid].double().numpy()
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return min(cos), len(cos)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-python", default=None, help="python of SpeechBrain's venv")
    ap.add_argument("--utterances", type=int, default=100)
    ap.add_argument("--channels", type=int, nargs="+", default=[1024, 512])
    ap.add_argument("--work", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    args = ap.parse_args()
    utts = utterances(corpora_root(), args.utterances)
    exe = peer_python(args.peer_python)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for c in args.channels:
            low, n = verify(c, utts, exe, work)
            ok &= low >= THRESHOLD
            print(
                f"speechbrain ECAPA-TDNN C={c}: min cosine {low:.9f} (1 - min = {1 - low:.1e}) over {n} utterances "
                f"(LibriSpeech test-other): {'PASS' if low >= THRESHOLD else 'FAIL'}"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
