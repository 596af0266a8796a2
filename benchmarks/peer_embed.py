"""Run by benchmarks/verify_imports.py in the PEERS' venv (never imported by spkemb).

Builds each peer model with the peer's own code (WeSpeaker / 3D-Speaker on PYTHONPATH) and random
weights (random BatchNorm statistics too), saves it in the peer's checkpoint layout, and embeds the
listed audio files with the peer's own feature pipeline. Writes OUT/<model>/ (the peer checkpoint)
and OUT/<model>.npz (ids, embeddings).

usage: python peer_embed.py OUT LIST.tsv MODEL [MODEL ...]   (LIST.tsv: utt_id<TAB>path per line)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml


def _randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


WESPEAKER = {
    "wespeaker-resnet34": (
        "ResNet34",
        {"feat_dim": 80, "embed_dim": 256, "pooling_func": "TSTP", "two_emb_layer": False},
    ),
    "wespeaker-ecapa-c512": ("ECAPA_TDNN_c512", {"feat_dim": 80, "embed_dim": 192, "pooling_func": "ASTP"}),
    "wespeaker-ecapa-c1024": ("ECAPA_TDNN_c1024", {"feat_dim": 80, "embed_dim": 192, "pooling_func": "ASTP"}),
}


def _bare_package(name: str) -> None:
    """Make ``name`` importable without running its ``__init__`` (WeSpeaker's imports its CLI: silero-vad...)."""
    import importlib.util
    import types

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not on PYTHONPATH")
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = module


def wespeaker(name: str, out: Path, files: list[tuple[str, str]]) -> np.ndarray:
    _bare_package("wespeaker")
    import wespeaker.models.ecapa_tdnn as ecapa_tdnn  # (speaker_model.py imports every model's deps)
    import wespeaker.models.resnet as resnet
    from wespeaker.dataset.processor import apply_cmvn, compute_fbank

    model_name, args = WESPEAKER[name]
    torch.manual_seed(0)
    model = getattr(resnet if model_name.startswith("ResNet") else ecapa_tdnn, model_name)(**args)
    _randomise(model, 1)
    model.eval()
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items()}
    state["projection.weight"] = torch.randn(100, args["embed_dim"])  # the training head, dropped on import
    torch.save(state, folder / "avg_model.pt")
    config = {
        "model": model_name,
        "model_args": args,
        "dataset_args": {
            "resample_rate": 16000,
            "fbank_args": {"num_mel_bins": 80, "frame_shift": 10, "frame_length": 25, "dither": 1.0},
        },
        "projection_args": {"project_type": "arc_margin", "scale": 32.0},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    embs = []
    for utt, path in files:
        wav, sr = sf.read(path, dtype="float32")
        sample = {"key": utt, "label": 0, "sample_rate": sr, "wav": torch.from_numpy(wav)[None]}
        feats = next(apply_cmvn(compute_fbank([sample], 80, 25, 10, dither=0.0)))["feat"]
        with torch.no_grad():
            out_ = model(feats[None])
        embs.append((out_[-1] if isinstance(out_, tuple) else out_)[0].numpy())
    return np.stack(embs)


def threedspeaker(name: str, out: Path, files: list[tuple[str, str]]) -> np.ndarray:
    from speakerlab.process.processor import FBank

    torch.manual_seed(0)
    if name == "eres2net":
        from speakerlab.models.eres2net.ERes2Net import ERes2Net

        model = ERes2Net(feat_dim=80, embedding_size=192)
    else:
        from speakerlab.models.campplus.DTDNN import CAMPPlus

        model = CAMPPlus(feat_dim=80, embedding_size=512)
    _randomise(model, 1)
    model.eval()
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / f"{name}_voxceleb.bin")
    fbank = FBank(80, sample_rate=16000, mean_nor=True)
    embs = []
    for _utt, path in files:
        wav, _sr = sf.read(path, dtype="float32")
        feats = fbank(torch.from_numpy(wav)[None])
        with torch.no_grad():
            embs.append(model(feats[None])[0].numpy())
    return np.stack(embs)


def main() -> None:
    out, listing, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    files = [tuple(line.split("\t")) for line in listing.read_text().splitlines() if line]
    for name in names:
        fn = wespeaker if name in WESPEAKER else threedspeaker
        vectors = fn(name, out, files)  # type: ignore[arg-type]
        np.savez(out / f"{name}.npz", ids=np.array([u for u, _ in files]), vectors=vectors)
        print(f"peer {name}: {len(files)} utterances embedded", flush=True)


if __name__ == "__main__":
    main()
