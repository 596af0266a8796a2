"""ERes2Net (Chen et al., Interspeech 2023): 3D-Speaker's Res2Net with local and global feature fusion.

A ResNet34-like 2-D network ([3, 4, 6, 3] blocks, channels m-2m-4m-8m, expansion 2, stride 2 from
the second stage) whose blocks are Res2Net bottlenecks (``scale`` splits of ``width`` channels);
in the last two stages the splits are joined by attentional feature fusion (AFF: a sigmoid-like
``1 + tanh`` gate from a 1x1-conv/BN/SiLU MLP of both inputs) instead of addition (local fusion);
stride-2 3x3 convs carry each stage's output down to be fused with the next by AFF (global fusion).
Temporal statistics pooling (std with 1e-8) and a linear embedding (``embed_dim``). The blocks'
activation is 3D-Speaker's ReLU clipped at 20 (``Hardtanh(0, 20)``); the stem's is a plain ReLU.

Module names are 3D-Speaker's, so its checkpoints load by name. Front-end: 3D-Speaker's Kaldi fbank
(see :mod:`spkemb.models.kaldi_fbank`); each utterance of a padded batch runs on its own frames only.
Trainable like any encoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spkemb.models.kaldi_fbank import KaldiFbank, by_length
from spkemb.models.registry import register_encoder
from spkemb.options import Options, opt

__all__ = ["ERes2Net"]


def _relu20(x: Tensor) -> Tensor:
    return F.hardtanh(x, 0.0, 20.0)


class _AFF(nn.Module):
    """Attentional feature fusion of ``x`` and ``y``: ``x * g + y * (2 - g)``, ``g = 1 + tanh(MLP([x; y]))``."""

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        inter = channels // r
        self.local_att = nn.Sequential(
            nn.Conv2d(2 * channels, inter, 1),
            nn.BatchNorm2d(inter),
            nn.SiLU(),
            nn.Conv2d(inter, channels, 1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        g = 1.0 + torch.tanh(self.local_att(torch.cat([x, y], dim=1)))
        return x * g + y * (2.0 - g)


class _Block(nn.Module):
    """Res2Net bottleneck (expansion 2); ``fuse``: splits joined by AFF instead of addition."""

    expansion = 2

    def __init__(self, cin: int, planes: int, stride: int, base_width: int, scale: int, fuse: bool) -> None:
        super().__init__()
        width = int(math.floor(planes * (base_width / 64.0)))
        self.width = width
        self.conv1 = nn.Conv2d(cin, width * scale, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(scale))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale))
        self.fuse_models = nn.ModuleList(_AFF(width) for _ in range(scale - 1)) if fuse else None
        cout = planes * self.expansion
        self.conv3 = nn.Conv2d(width * scale, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.split(_relu20(self.bn1(self.conv1(x))), self.width, dim=1)
        outs: list[Tensor] = []
        sp = parts[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            if i > 0:
                sp = self.fuse_models[i - 1](sp, parts[i]) if self.fuse_models is not None else sp + parts[i]
            sp = _relu20(bn(conv(sp)))
            outs.append(sp)
        out = self.bn3(self.conv3(torch.cat(outs, dim=1)))
        return _relu20(out + self.shortcut(x))


@dataclass
class ERes2NetOptions(Options):
    """ERes2Net's options (3D-Speaker's defaults: the 6.6 M-parameter VoxCeleb model)."""

    sample_rate: int = opt(16000, "input sample rate (Hz)")
    n_mels: int = opt(80, "Kaldi fbank bins")
    embed_dim: int = opt(192, "embedding size")
    m_channels: int = opt(32, "channels of the first stage (doubled at each stage)")
    layers: tuple[int, ...] = opt((3, 4, 6, 3), "blocks per stage")
    base_width: int = opt(32, "Res2Net base width (split width = planes * base_width / 64)")
    scale: int = opt(2, "Res2Net splits per block")
    two_emb_layer: bool = opt(False, "a second embedding layer after ReLU and BatchNorm")
    window: str = opt("povey", "Kaldi fbank window (3D-Speaker: povey)")
    scale_samples: float = opt(1.0, "samples are multiplied by this before the fbank (3D-Speaker: 1)")

    def __post_init__(self) -> None:
        if len(self.layers) != 4:
            raise ValueError(f"layers needs 4 stages, got {len(self.layers)}")


@register_encoder("eres2net")
class ERes2Net(nn.Module):
    """ERes2Net (192-d) on 3D-Speaker's Kaldi fbank front-end."""

    Options = ERes2NetOptions
    # added by name in __init__ (3D-Speaker's module names)
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    layer4: nn.Module
    layer1_downsample: nn.Module
    layer2_downsample: nn.Module
    layer3_downsample: nn.Module

    def __init__(self, options: ERes2NetOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = options.replace(**kwargs) if options else ERes2NetOptions(**kwargs)
        self.config = {"name": "eres2net", **o.to_dict()}
        self.sample_rate = int(o.sample_rate)
        self.embed_dim = int(o.embed_dim)
        self.frontend = KaldiFbank(o.sample_rate, o.n_mels, window=o.window, scale=o.scale_samples)
        m = int(o.m_channels)
        self.conv1 = nn.Conv2d(1, m, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        cin = m
        for stage, n in enumerate(o.layers):
            planes = m * 2**stage
            blocks = []
            for i in range(int(n)):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_Block(cin, planes, stride, int(o.base_width), int(o.scale), fuse=stage >= 2))
                cin = planes * _Block.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        for i, c in enumerate((2 * m, 4 * m, 8 * m), start=1):
            self.add_module(f"layer{i}_downsample", nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False))
        self.fuse_mode12 = _AFF(4 * m)
        self.fuse_mode123 = _AFF(8 * m)
        self.fuse_mode1234 = _AFF(16 * m)
        stats_dim = int(o.n_mels / 8) * m * 8 * _Block.expansion
        self.seg_1 = nn.Linear(2 * stats_dim, self.embed_dim)
        self.two_emb_layer = bool(o.two_emb_layer)
        if self.two_emb_layer:
            self.seg_bn_1: nn.Module = nn.BatchNorm1d(self.embed_dim, affine=False)
            self.seg_2: nn.Module = nn.Linear(self.embed_dim, self.embed_dim)

    def embed_feats(self, feats: Tensor) -> Tensor:
        """(B, D) embeddings of (B, T, n_mels) features of equal length (3D-Speaker's model forward)."""
        x = F.relu(self.bn1(self.conv1(feats.transpose(1, 2).unsqueeze(1))))
        out1 = self.layer1(x)
        out2 = self.layer2(out1)
        fused = self.fuse_mode12(out2, self.layer1_downsample(out1))
        out3 = self.layer3(out2)
        fused = self.fuse_mode123(out3, self.layer2_downsample(fused))
        out4 = self.layer4(out3)
        fused = self.fuse_mode1234(out4, self.layer3_downsample(fused))
        x = fused.reshape(fused.shape[0], -1, fused.shape[-1])
        emb = self.seg_1(torch.cat([x.mean(dim=-1), torch.sqrt(torch.var(x, dim=-1) + 1e-8)], dim=1))
        if self.two_emb_layer:
            emb = self.seg_2(self.seg_bn_1(F.relu(emb)))
        return emb

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        return by_length(self.embed_feats, self.frontend(wav, lengths))
