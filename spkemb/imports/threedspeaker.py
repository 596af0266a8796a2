"""3D-Speaker checkpoints (CAM++) as spkemb encoders.

3D-Speaker saves a model as its bare ``state_dict`` (``campplus_*.bin`` from ModelScope, or the
``embedding_model.ckpt`` of a training run). ``src`` is that file or a folder holding exactly one
``*.bin`` / ``*.ckpt`` / ``*.pt`` (``embedding_model.ckpt`` preferred). The architecture's sizes are
read from the tensors' shapes (3D-Speaker's ``feat_dim``, ``embedding_size``, ``growth_rate``,
``bn_size``, ``init_channels`` and the layers per block); the dilations are CAM++'s (1, 2, 2).
The front-end is 3D-Speaker's: Kaldi fbank (80 bins, 25/10 ms, povey window, samples in [-1, 1],
no dither) minus its mean over the utterance (``FBank(80, 16000, mean_nor=True)``).
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


def import_model(src: Path) -> nn.Module:
    """The 3D-Speaker model in checkpoint ``src`` (or the folder holding it) as a spkemb encoder."""
    src = Path(src)
    ckpt = _checkpoint(src)
    state = strip_prefixes(read_state_dict(ckpt), ("module.", "embedding_model."))
    if any(k.startswith("xvector.") for k in state) and "head.conv1.weight" in state:
        config = campplus_config(state, ckpt)
        peer = {"model": "CAMPPlus", "feat_dim": config["n_mels"], "embedding_size": config["embed_dim"]}
    else:
        first = next(iter(state), "")
        raise InputError(f"not a CAM++ checkpoint (first key {first!r}; supported: CAM++)", ckpt)
    model = build_encoder(**config)
    load_weights(model, state, ckpt, what="3D-Speaker checkpoint")
    model.eval()
    peer.update(growth_rate=config["growth_rate"], bn_size=config["bn_size"], init_channels=config["init_channels"])
    model.extra = imported_extra("3dspeaker", src, [ckpt], peer)  # type: ignore[assignment]
    return model
