"""A tiny SpeechBrain ECAPA-TDNN model folder, built from SpeechBrain's documented key names (no
SpeechBrain needed): the importer's unit tests and the import-model CLI tests share it."""

from __future__ import annotations

import math
from pathlib import Path

import torch

DIMS = {
    "n_mels": 16,
    "channels": 16,
    "mfa_channels": 24,
    "attention_channels": 8,
    "se_channels": 4,
    "scale": 2,
    "embed_dim": 12,
}


def sb_state(seed: int = 0, **over: int) -> dict[str, torch.Tensor]:
    """A random ``ECAPA_TDNN`` state dict with SpeechBrain's keys (``blocks.0`` the first TDNN, 1-3 the
    SE-Res2 blocks, ``mfa``, ``asp``, ``asp_bn``, ``fc``; convs ``*.conv.conv.*``, norms ``*.norm.norm.*``)."""
    d = {**DIMS, **over}
    g = torch.Generator().manual_seed(seed)
    s: dict[str, torch.Tensor] = {}

    def conv(prefix: str, cout: int, cin: int, k: int) -> None:
        s[f"{prefix}.weight"] = torch.randn(cout, cin, k, generator=g) / math.sqrt(cin * k)
        s[f"{prefix}.bias"] = 0.1 * torch.randn(cout, generator=g)

    def bn(prefix: str, c: int) -> None:
        s[f"{prefix}.weight"] = 0.5 + torch.rand(c, generator=g)
        s[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=g)
        s[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        s[f"{prefix}.running_var"] = 0.5 + torch.rand(c, generator=g)
        s[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    def tdnn(prefix: str, cin: int, cout: int, k: int) -> None:
        conv(f"{prefix}.conv.conv", cout, cin, k)
        bn(f"{prefix}.norm.norm", cout)

    C, mfa, width = d["channels"], d["mfa_channels"], d["channels"] // d["scale"]
    tdnn("blocks.0", d["n_mels"], C, 5)
    for i in (1, 2, 3):
        tdnn(f"blocks.{i}.tdnn1", C, C, 1)
        for j in range(d["scale"] - 1):
            tdnn(f"blocks.{i}.res2net_block.blocks.{j}", width, width, 3)
        tdnn(f"blocks.{i}.tdnn2", C, C, 1)
        conv(f"blocks.{i}.se_block.conv1.conv", d["se_channels"], C, 1)
        conv(f"blocks.{i}.se_block.conv2.conv", C, d["se_channels"], 1)
    tdnn("mfa", 3 * C, mfa, 1)
    tdnn("asp.tdnn", 3 * mfa, d["attention_channels"], 1)
    conv("asp.conv.conv", mfa, d["attention_channels"], 1)
    bn("asp_bn.norm", 2 * mfa)
    conv("fc.conv", d["embed_dim"], 2 * mfa, 1)
    return s


def sb_folder(root: Path, emb_norm: bool = True, **over: int) -> Path:
    """A SpeechBrain model folder: embedding_model.ckpt (+ mean_var_norm_emb.ckpt)."""
    root.mkdir(parents=True, exist_ok=True)
    torch.save(sb_state(**over), root / "embedding_model.ckpt")
    if emb_norm:
        dim = {**DIMS, **over}["embed_dim"]
        stats = {"count": 3, "glob_mean": torch.linspace(-1, 1, dim), "glob_std": torch.ones(dim)}
        torch.save(stats, root / "mean_var_norm_emb.ckpt")
    return root
