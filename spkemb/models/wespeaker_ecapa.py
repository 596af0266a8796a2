"""WeSpeaker's ECAPA-TDNN (``ECAPA_TDNN_c512`` / ``_c1024``) with its exact front-end, for imported models.

WeSpeaker's variant differs from spkemb's ``ecapa`` (which follows the paper and SpeechBrain): in
each Res2 block the untouched split goes last, the aggregation conv has no BatchNorm (a ReLU
follows it), attentive statistics pooling uses tanh without BatchNorm (optionally with global
context) and std clamped at 1e-7, and the embedding is BN -> linear (an extra BN with ``emb_bn``).
Module names are those of WeSpeaker's checkpoints, so an ``avg_model.pt`` loads by name. Front-end:
WeSpeaker's Kaldi fbank (see :mod:`spkemb.models.kaldi_fbank`); each utterance of a padded batch
runs on its own frames only. Trainable like any encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spkemb.models.kaldi_fbank import KaldiFbank, by_length
from spkemb.models.registry import register_encoder
from spkemb.options import Options, opt

__all__ = ["WeSpeakerECAPA"]


class _ConvReluBn(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 1, padding: int = 0, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=padding, dilation=dilation)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(F.relu(self.conv(x)))


class _Res2(nn.Module):
    """Res2 conv: splits 1..scale-1 through convs (each adding the previous output), split ``scale`` last."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int) -> None:
        super().__init__()
        self.width = channels // scale
        self.convs = nn.ModuleList(
            nn.Conv1d(self.width, self.width, kernel, padding=dilation * (kernel // 2), dilation=dilation)
            for _ in range(scale - 1)
        )
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(scale - 1))

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.split(x, self.width, dim=1)
        outs = []
        sp = parts[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            if i >= 1:
                sp = sp + parts[i]
            sp = bn(F.relu(conv(sp)))
            outs.append(sp)
        outs.append(parts[len(self.convs)])
        return torch.cat(outs, dim=1)


class _SE(nn.Module):
    def __init__(self, channels: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(self.linear2(F.relu(self.linear1(x.mean(dim=2)))))
        return x * s.unsqueeze(2)


class _SERes2Block(nn.Module):
    def __init__(self, channels: int, dilation: int, scale: int = 8) -> None:
        super().__init__()
        self.se_res2block = nn.Sequential(
            _ConvReluBn(channels, channels),
            _Res2(channels, 3, dilation, scale),
            _ConvReluBn(channels, channels),
            _SE(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.se_res2block(x)


class _ASTP(nn.Module):
    """Attentive statistics pooling: softmax over time of V tanh(W x + b) + k weights mean and std."""

    def __init__(self, channels: int, bottleneck: int = 128, global_context: bool = False) -> None:
        super().__init__()
        self.global_context = global_context
        self.linear1 = nn.Conv1d(3 * channels if global_context else channels, bottleneck, 1)
        self.linear2 = nn.Conv1d(bottleneck, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if self.global_context:
            mean = x.mean(dim=-1, keepdim=True).expand_as(x)
            std = torch.sqrt(torch.var(x, dim=-1, keepdim=True) + 1e-7).expand_as(x)
            h = torch.cat([x, mean, std], dim=1)
        w = torch.softmax(self.linear2(torch.tanh(self.linear1(h))), dim=2)
        mu = (w * x).sum(dim=2)
        var = (w * x.square()).sum(dim=2) - mu.square()
        return torch.cat([mu, var.clamp(min=1e-7).sqrt()], dim=1)


@dataclass
class WeSpeakerECAPAOptions(Options):
    """WeSpeaker ECAPA-TDNN's options (its ``model_args`` plus the front-end)."""

    sample_rate: int = opt(16000, "input sample rate (Hz)")
    n_mels: int = opt(80, "Kaldi fbank bins (WeSpeaker's feat_dim)")
    channels: int = opt(512, "channels of the SE-Res2 blocks (512: ECAPA_TDNN_c512, 1024: _c1024)")
    embed_dim: int = opt(192, "embedding size")
    global_context: bool = opt(False, "attention sees utterance mean and std (WeSpeaker's _GLOB_ models)")
    emb_bn: bool = opt(False, "BatchNorm after the embedding layer (WeSpeaker's emb_bn)")
    window: str = opt("hamming", "Kaldi fbank window")
    scale: float = opt(32768.0, "samples are multiplied by this before the fbank (WeSpeaker: 2^15)")

    def __post_init__(self) -> None:
        if self.channels % 8:
            raise ValueError(f"channels ({self.channels}) must be divisible by 8")


@register_encoder("wespeaker-ecapa")
class WeSpeakerECAPA(nn.Module):
    """WeSpeaker ECAPA-TDNN (c512 or c1024, 192-d) on WeSpeaker's Kaldi fbank front-end."""

    Options = WeSpeakerECAPAOptions

    def __init__(self, options: WeSpeakerECAPAOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = options.replace(**kwargs) if options else WeSpeakerECAPAOptions(**kwargs)
        self.config = {"name": "wespeaker-ecapa", **o.to_dict()}
        self.sample_rate = int(o.sample_rate)
        self.embed_dim = int(o.embed_dim)
        self.frontend = KaldiFbank(o.sample_rate, o.n_mels, window=o.window, scale=o.scale)
        c = int(o.channels)
        self.layer1 = _ConvReluBn(o.n_mels, c, kernel=5, padding=2)
        self.layer2 = _SERes2Block(c, 2)
        self.layer3 = _SERes2Block(c, 3)
        self.layer4 = _SERes2Block(c, 4)
        self.conv = nn.Conv1d(3 * c, 1536, 1)
        self.pool = _ASTP(1536, global_context=bool(o.global_context))
        self.bn = nn.BatchNorm1d(2 * 1536)
        self.linear = nn.Linear(2 * 1536, self.embed_dim)
        self.emb_bn = bool(o.emb_bn)
        if self.emb_bn:
            self.bn2 = nn.BatchNorm1d(self.embed_dim)

    def embed_feats(self, feats: Tensor) -> Tensor:
        """(B, D) embeddings of (B, T, n_mels) features of equal length (WeSpeaker's model forward)."""
        x1 = self.layer1(feats.transpose(1, 2))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        x = F.relu(self.conv(torch.cat([x2, x3, x4], dim=1)))
        emb = self.linear(self.bn(self.pool(x)))
        return self.bn2(emb) if self.emb_bn else emb

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        return by_length(self.embed_feats, self.frontend(wav, lengths))
