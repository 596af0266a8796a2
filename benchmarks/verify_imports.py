"""Verify the WeSpeaker and 3D-Speaker importers against the peers' own code (issue 19, item 2).

For each model: the peer's code (in a separate venv, the peer's source on PYTHONPATH) builds the
model with random weights, saves it in the peer's checkpoint layout and embeds real speech with the
peer's own pipeline (benchmarks/peer_embed.py); spkemb imports the checkpoint
(``spkemb.imports.import_model``, saved with ``save_encoder`` as ``spkemb import-model`` does) and
embeds the same files with ``spkemb extract`` (padded, length-bucketed batches). Prints the minimum
cosine over the utterances per model; every one must be >= 0.9999.

    python benchmarks/verify_imports.py --peer-python /work/venvs/peers/bin/python \\
        --wespeaker /tmp/peers/wespeaker --3dspeaker /tmp/peers/3dspeaker [--limit 100]

(``--wespeaker`` / ``--3dspeaker``: folders holding ``wespeaker/`` and ``speakerlab/``, e.g.
``git --git-dir=<mirror> archive HEAD wespeaker | tar -x -C DIR``; also $SPKEMB_PEER_PYTHON,
$WESPEAKER_SRC, $THREEDSPEAKER_SRC.) Skips, with a message, what is absent.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import corpora_root  # noqa: E402

from spkemb.data.manifest import read_manifest  # noqa: E402
from spkemb.embeddings.store import read_embeddings  # noqa: E402
from spkemb.imports import import_model  # noqa: E402
from spkemb.models import save_encoder  # noqa: E402

MODELS = {  # name -> (format, peer source option, checkpoint inside the peer's output folder)
    "wespeaker-resnet34": ("wespeaker", "wespeaker", ""),
    "wespeaker-ecapa-c512": ("wespeaker", "wespeaker", ""),
    "wespeaker-ecapa-c1024": ("wespeaker", "wespeaker", ""),
    "3dspeaker-campplus": ("3dspeaker", "threedspeaker", "campplus_voxceleb.bin"),
    "3dspeaker-eres2net": ("3dspeaker", "threedspeaker", "eres2net_voxceleb.bin"),
}
THRESHOLD = 0.9999


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-python", default=os.environ.get("SPKEMB_PEER_PYTHON", "/work/venvs/peers/bin/python"))
    ap.add_argument("--wespeaker", default=os.environ.get("WESPEAKER_SRC", "/tmp/peers/wespeaker"))
    ap.add_argument(
        "--3dspeaker", dest="threedspeaker", default=os.environ.get("THREEDSPEAKER_SRC", "/tmp/peers/3dspeaker")
    )
    ap.add_argument("--limit", type=int, default=100, help="utterances of LibriSpeech test-other (default 100)")
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--work", help="keep the checkpoints, manifest and stores here (default: a temp folder)")
    return ap.parse_args()


def _spkemb(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "spkemb", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    a = _args()
    root = corpora_root() / "librispeech-samples"
    if not Path(a.peer_python).is_file():
        print(f"skipped: no peer venv python at {a.peer_python} (--peer-python)")
        return
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="verify-imports-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "manifest.tsv"
    _spkemb("prepare", str(root / "test-other"), "-o", str(manifest))
    utts = read_manifest(manifest)[: a.limit]
    manifest.write_text(
        "utt_id\tpath\tspeaker\tduration\tsample_rate\n"
        + "".join(f"{u.utt_id}\t{u.path}\t{u.speaker}\t{u.duration}\t{u.sample_rate}\n" for u in utts)
    )
    listing = work / "files.tsv"
    listing.write_text("".join(f"{u.utt_id}\t{u.path}\n" for u in utts))
    seconds = sum(u.duration for u in utts)
    print(f"{len(utts)} utterances of LibriSpeech test-other ({seconds / 60:.1f} min); load {os.getloadavg()[0]:.1f}")
    rows = []
    for name in a.models:
        fmt, src_opt, ckpt = MODELS[name]
        src = Path(getattr(a, src_opt))
        pkg = "wespeaker" if fmt == "wespeaker" else "speakerlab"
        if not (src / pkg).is_dir():
            print(f"{name}: skipped: no {pkg}/ under {src}")
            continue
        peer_name = name.removeprefix("3dspeaker-")
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        subprocess.run(
            [a.peer_python, str(Path(__file__).with_name("peer_embed.py")), str(work), str(listing), peer_name],
            check=True,
            env=env,
        )
        t_peer = time.perf_counter() - t0
        model = import_model(fmt, work / peer_name / ckpt if ckpt else work / peer_name)
        encoder = save_encoder(model, work / f"{name}.pt", extra=model.extra)
        t0 = time.perf_counter()
        store = work / f"{name}.h5"
        _spkemb("extract", str(encoder), str(manifest), "-o", str(store), "--overwrite")
        t_ours = time.perf_counter() - t0
        ours = read_embeddings(store)
        peer = np.load(work / f"{peer_name}.npz")
        index = ours.index()
        x = peer["vectors"].astype(np.float64)
        y = ours.vectors[[index[str(u)] for u in peer["ids"]]].astype(np.float64)
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        ok = bool((cos >= THRESHOLD).all())
        rel = float((np.linalg.norm(x - y, axis=1) / np.linalg.norm(x, axis=1)).max())
        rows.append((name, len(cos), float(cos.min()), rel, ok))
        print(
            f"{name}: {len(cos)} utterances, min cosine {cos.min():.15f} (1 - {1 - cos.min():.2g}), "
            f"max |peer - spkemb| / |peer| {rel:.2g}, "
            f"{'ok' if ok else 'FAIL'}; peer {t_peer:.0f} s, spkemb extract {t_ours:.0f} s",
            flush=True,
        )
    print("\n| model | utterances | min cosine | 1 - min cosine | max relative L2 difference |\n|---|---|---|---|---|")
    for name, n, c, rel, _ in rows:
        print(f"| {name} | {n} | {c:.12f} | {1 - c:.2g} | {rel:.2g} |")
    if not all(ok for *_, ok in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
