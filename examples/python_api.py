"""spkemb from Python, end to end, at toy sizes (it runs in seconds on a CPU; CI runs it).

    python examples/python_api.py [WORKDIR]

What each command does is a function here: build an encoder, train it a few steps with the
Trainer, embed a file, score two files, write and read an embedding store, cluster its vectors.
The README's "Use it from Python" walks through the same steps.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import spkemb
from spkemb.audio import audio_info
from spkemb.cluster import ClusterOptions, cluster_embeddings
from spkemb.data.crops import collate_crops
from spkemb.data.manifest import Utterance
from spkemb.data.synthetic import make_corpus
from spkemb.embeddings.extract import extract_embeddings
from spkemb.embeddings.plan import ExtractOptions
from spkemb.embeddings.store import read_embeddings
from spkemb.methods import build_method
from spkemb.models import build_encoder, save_encoder
from spkemb.train import TrainConfig, Trainer, seed_everything
from spkemb.train.data import DataOptions, crop_dataset

TINY_ECAPA = {"channels": 16, "mfa_channels": 48, "attention_channels": 8, "se_channels": 8, "embed_dim": 16}


def main(work: Path) -> dict[str, object]:
    # 1. Audio and its utterances (a manifest in memory: spkemb prepare writes the same rows).
    files = make_corpus(work / "audio", n_speakers=3, utts_per_speaker=4, seconds=(1.0, 1.5), seed=0)
    utts = [
        Utterance(f"{p.parent.parent.name}/{p.stem}{p.parent.name}", str(p), p.parent.parent.name,
                  audio_info(p).duration, 16000)
        for p in files
    ]  # fmt: skip

    # 2. An encoder, and a training method around it (its crops come from its own options).
    seed_everything(0)
    encoder = build_encoder("ecapa", **TINY_ECAPA)
    method = build_method("simclr", encoder, crop_seconds=0.5, proj_dim=16, proj_hidden=32)
    dataset = crop_dataset(utts, DataOptions(gain=True), method.crop_views(), encoder.sample_rate, seed=0)

    # 3. A few steps with the Trainer: checkpoints, metrics.jsonl and encoder.pt land in exp/.
    cfg = TrainConfig(method="simclr", batch_size=4, max_steps=3, lr=1e-3, device="cpu", log_every=1)

    def export(path: Path) -> None:
        save_encoder(method.encoder, path, extra={"method": "simclr"})

    summary = Trainer(method, dataset, collate_crops, cfg, work / "exp", export_encoder=export).fit()
    print(f"trained {summary['steps']} steps, loss {summary['loss']:.3f}; encoder {summary['encoder']}")

    # 4. Embed a file, and verify two files in one call.
    enc = spkemb.load_encoder(work / "exp")  # the folder's encoder.pt, in eval mode
    vector = spkemb.embed(enc, files[0])
    same = spkemb.verify(enc, files[0], files[1])  # one speaker
    other = spkemb.verify(enc, files[0], files[-1])  # another
    print(f"embedding {vector.shape}; cosine same speaker {same:.3f}, other speaker {other:.3f}")

    # 5. A store of every utterance (what `spkemb extract` writes), and what reading it gives.
    store = work / "emb.h5"
    extract_embeddings(enc, utts, store, {"encoder": "exp/encoder.pt"}, ExtractOptions(device="cpu"))
    emb = read_embeddings(store)  # an EmbeddingSet
    print(f"store: {len(emb)} ids (e.g. {emb.ids[0]}), vectors {emb.vectors.shape} {emb.vectors.dtype}, "
          f"speakers {sorted(set(emb.speakers or []))}, attrs {sorted(emb.attrs)[:4]}...")  # fmt: skip
    assert np.allclose(emb.vectors[0], vector, atol=1e-5)  # embed() gives the store's vector

    # 6. Cluster the vectors (what `spkemb cluster` does with a store).
    labels = cluster_embeddings(emb.vectors, ClusterOptions(method="ahc", n_clusters=3))
    print(f"clusters: {np.bincount(labels).tolist()} utterances each")
    return {"steps": summary["steps"], "dim": int(vector.shape[0]), "rows": len(emb), "clusters": len(set(labels))}


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
