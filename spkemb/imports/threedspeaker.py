"""3D-Speaker checkpoints (CAM++, ERes2Net) as spkemb encoders.

3D-Speaker saves a model as its bare ``state_dict`` (``campplus_*.bin`` from ModelScope, or the
``embedding_model.ckpt`` of a training run). ``src`` is that file or a folder holding exactly one
``*.bin`` / ``*.ckpt`` / ``*.pt`` (``embedding_model.ckpt`` preferred). The architecture (CAM++:
``xvector.*`` keys; ERes2Net: ``fuse_mode12.*``) and its sizes are read from the tensors' shapes:
CAM++'s ``feat_dim``, ``embedding_size``, ``growth_rate``, ``bn_size``, ``init_channels`` and layers
per block (dilations 1, 2, 2, CAM++'s); ERes2Net's ``m_channels``, ``baseWidth``, ``scale``, blocks
per stage and ``embedding_size``. The front-end is 3D-Speaker's: Kaldi fbank (80 bins, 25/10 ms,
povey window, samples in [-1, 1], no dither) minus its mean over the utterance
(``FBank(80, 16000, mean_nor=True)``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from spkemb.errors import InputError
from spkemb.imports.checkpoints import imported_extra, load_weights, read_state_dict, strip_prefixes
from spkemb.models import build_encoder

__all__ = ["import_model", "campplus_config"]

SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
_DENSE = re.compile(r"^xvector\.block(\d+)\.tdnnd(\d+)\.linear1\.weight$")


def _checkpoint(src: Path) -> Path:
    if src.is_file():
        return src
    preferred = src / "embedding_model.ckpt"
    if preferred.is_file():
        return preferred
    found = sorted(p for p in src.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise InputError(f"expected one 3D-Speaker checkpoint (*.bin, *.ckpt, *.pt) here, found {what}", src)
    return found[0]


def _shape(state: dict[str, Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise InputError(f"3D-Speaker checkpoint lacks key {key!r} that CAM++ needs", path)
    return tuple(state[key].shape)


def campplus_config(state: dict[str, Tensor], path: Path) -> dict[str, Any]:
    """The ``campplus`` encoder config whose tensors have the shapes of ``state``."""
    m = _shape(state, "head.conv1.weight", path)[0]
    init, head_out, _ = _shape(state, "xvector.tdnn.linear.weight", path)
    if head_out % m:
        raise InputError(f"key 'xvector.tdnn.linear.weight' has {head_out} inputs, not a multiple of {m}", path)
    layers: dict[int, int] = {}
    for key in state:
        match = _DENSE.match(key)
        if match:
            b, j = int(match.group(1)), int(match.group(2))
            layers[b] = max(layers.get(b, 0), j)
    if not layers or sorted(layers) != list(range(1, len(layers) + 1)):
        raise InputError("3D-Speaker checkpoint has no CAM++ dense blocks (xvector.block1.tdnnd1.*)", path)
    bn_channels = _shape(state, "xvector.block1.tdnnd1.linear1.weight", path)[0]
    growth = _shape(state, "xvector.block1.tdnnd1.cam_layer.linear_local.weight", path)[0]
    if bn_channels % growth:
        raise InputError(f"bottleneck {bn_channels} is not a multiple of the growth rate {growth}", path)
    blocks = tuple(layers[b] for b in sorted(layers))
    return {
        "name": "campplus",
        "sample_rate": 16000,
        "n_mels": head_out // m * 8,
        "embed_dim": _shape(state, "xvector.dense.linear.weight", path)[0],
        "m_channels": m,
        "init_channels": init,
        "growth_rate": growth,
        "bn_size": bn_channels // growth,
        "block_layers": blocks,
        "block_dilations": (1, 2, 2)[: len(blocks)] + (2,) * max(0, len(blocks) - 3),
    }


_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.conv1\.weight$")
_SPLIT = re.compile(r"^layer1\.0\.convs\.(\d+)\.weight$")


def eres2net_config(state: dict[str, Tensor], path: Path) -> dict[str, Any]:
    """The ``eres2net`` encoder config whose tensors have the shapes of ``state``."""
    m = _shape(state, "conv1.weight", path)[0]
    blocks = [0, 0, 0, 0]
    splits = 0
    for key in state:
        match = _BLOCK.match(key)
        if match:
            stage, j = int(match.group(1)) - 1, int(match.group(2))
            blocks[stage] = max(blocks[stage], j + 1)
        match = _SPLIT.match(key)
        if match:
            splits = max(splits, int(match.group(1)) + 1)
    if not all(blocks) or not splits:
        raise InputError("3D-Speaker checkpoint has no ERes2Net blocks (layer1.0.convs.0.*)", path)
    width = _shape(state, "layer1.0.convs.0.weight", path)[0]
    seg_in = _shape(state, "seg_1.weight", path)[1]
    n_mels = seg_in // (2 * m * 8 * 2) * 8
    return {
        "name": "eres2net",
        "sample_rate": 16000,
        "n_mels": n_mels,
        "embed_dim": _shape(state, "seg_1.weight", path)[0],
        "m_channels": m,
        "layers": tuple(blocks),
        "base_width": width * 64 // m,
        "scale": splits,
        "two_emb_layer": "seg_2.weight" in state,
    }


def import_model(src: Path) -> nn.Module:
    """The 3D-Speaker model in checkpoint ``src`` (or the folder holding it) as a spkemb encoder."""
    src = Path(src)
    ckpt = _checkpoint(src)
    state = strip_prefixes(read_state_dict(ckpt), ("module.", "embedding_model."))
    if any(k.startswith("xvector.") for k in state) and "head.conv1.weight" in state:
        config = campplus_config(state, ckpt)
        peer = {"model": "CAMPPlus", "feat_dim": config["n_mels"], "embedding_size": config["embed_dim"]}
    elif "fuse_mode12.local_att.0.weight" in state:
        config = eres2net_config(state, ckpt)
        peer = {"model": "ERes2Net", "feat_dim": config["n_mels"], "embedding_size": config["embed_dim"]}
        peer.update(m_channels=config["m_channels"], baseWidth=config["base_width"], scale=config["scale"])
    else:
        first = next(iter(state), "")
        raise InputError(f"not a CAM++ or ERes2Net checkpoint (first key {first!r})", ckpt)
    model = build_encoder(**config)
    load_weights(model, state, ckpt, what="3D-Speaker checkpoint")
    model.eval()
    if config["name"] == "campplus":
        peer.update(growth_rate=config["growth_rate"], bn_size=config["bn_size"], init_channels=config["init_channels"])
    model.extra = imported_extra("3dspeaker", src, [ckpt], peer)  # type: ignore[assignment]
    return model
