"""CAM++ (Wang et al., Interspeech 2023): 3D-Speaker's densely connected TDNN with context-aware masking.

A 2-D convolutional front module (FCM: a 3x3 conv, two stages of two basic residual blocks with
stride 2 in frequency only, a stride-(2, 1) conv) turns the fbank into 32 x F/8 channels per frame;
then a stride-2 TDNN (k=5, 128 channels), three dense TDNN blocks (12, 24, 16 layers, growth 32,
k=3, dilation 1, 2, 2) each followed by a transition layer that halves the channels, statistics
pooling (mean and unbiased std) and a dense layer with a non-affine BatchNorm (``embed_dim``). Each
dense layer's output is gated by context-aware masking: a sigmoid of an MLP of the utterance mean
plus the mean of its 100-frame segment. Every BatchNorm/ReLU precedes its linear map ("batchnorm-relu").

Module names are those of 3D-Speaker's checkpoints (``head.*``, ``xvector.*``), so its weights load
by name. The front-end is 3D-Speaker's: Kaldi fbank (80 bins, 25/10 ms, povey window, samples in
[-1, 1], no dither) with per-utterance mean subtraction. Each utterance of a padded batch runs on
its own frames only (the segment pooling and statistics would see padding otherwise), so a padded
batch gives what each utterance gives alone. Trainable like any encoder.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spkemb.models.kaldi_fbank import KaldiFbank, by_length
from spkemb.models.registry import register_encoder
from spkemb.options import Options, opt

__all__ = ["CAMPPlus"]


def _bn_relu(channels: int) -> nn.Sequential:
    """BatchNorm then ReLU, named as 3D-Speaker names them (``batchnorm``, ``relu``)."""
    return nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(channels), relu=nn.ReLU()))


class _ResBlock(nn.Module):
    """Basic residual block whose stride applies to frequency only."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(h + self.shortcut(x))


class _FCM(nn.Module):
    def __init__(self, n_mels: int, m_channels: int = 32) -> None:
        super().__init__()
        m = m_channels
        self.conv1 = nn.Conv2d(1, m, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        self.layer1 = nn.Sequential(_ResBlock(m, m, 2), _ResBlock(m, m, 1))
        self.layer2 = nn.Sequential(_ResBlock(m, m, 2), _ResBlock(m, m, 1))
        self.conv2 = nn.Conv2d(m, m, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(m)
        self.out_channels = m * (n_mels // 8)

    def forward(self, x: Tensor) -> Tensor:
        """(B, F, T) -> (B, m * F/8, T)."""
        h = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        h = self.layer2(self.layer1(h))
        h = F.relu(self.bn2(self.conv2(h)))
        return h.reshape(h.shape[0], h.shape[1] * h.shape[2], h.shape[3])


class _TDNN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.nonlinear = _bn_relu(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.nonlinear(self.linear(x))


class _CAM(nn.Module):
    """Context-aware masking: a local conv gated by sigmoid(MLP(utterance mean + segment mean))."""

    def __init__(self, bn_channels: int, cout: int, kernel: int, dilation: int, seg_len: int = 100) -> None:
        super().__init__()
        pad = (kernel - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(bn_channels, cout, kernel, padding=pad, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // 2, 1)
        self.linear2 = nn.Conv1d(bn_channels // 2, cout, 1)
        self.seg_len = seg_len

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear_local(x)
        T = x.shape[-1]
        seg = F.avg_pool1d(x, kernel_size=self.seg_len, stride=self.seg_len, ceil_mode=True)
        seg = seg.repeat_interleave(self.seg_len, dim=-1)[..., :T]
        context = x.mean(dim=-1, keepdim=True) + seg
        return y * torch.sigmoid(self.linear2(F.relu(self.linear1(context))))


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = _bn_relu(cin)
        self.linear1 = nn.Conv1d(cin, bn_channels, 1, bias=False)
        self.nonlinear2 = _bn_relu(bn_channels)
        self.cam_layer = _CAM(bn_channels, growth, kernel, dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, cin: int, growth: int, bn_channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"tdnnd{i + 1}", _DenseLayer(cin + i * growth, growth, bn_channels, kernel, dilation))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.values():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class _Transit(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.nonlinear = _bn_relu(cin)
        self.linear = nn.Conv1d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.nonlinear(x))


class _StatsPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x.mean(dim=-1), x.std(dim=-1, unbiased=True)], dim=-1)


class _Embedding(nn.Module):
    """1x1 conv (no bias) on the pooled statistics, then a BatchNorm without affine parameters."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(cin, cout, 1, bias=False)
        self.nonlinear = nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(cout, affine=False)))

    def forward(self, x: Tensor) -> Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


@dataclass
class CAMPPlusOptions(Options):
    """CAM++'s options (3D-Speaker's defaults; its VoxCeleb model has embed_dim 512, CN-Celeb 192)."""

    sample_rate: int = opt(16000, "input sample rate (Hz)")
    n_mels: int = opt(80, "Kaldi fbank bins (divisible by 8)")
    embed_dim: int = opt(512, "embedding size")
    m_channels: int = opt(32, "channels of the 2-D front module")
    init_channels: int = opt(128, "channels of the first TDNN layer")
    growth_rate: int = opt(32, "channels each dense layer adds")
    bn_size: int = opt(4, "dense layer bottleneck = bn_size * growth_rate")
    block_layers: tuple[int, ...] = opt((12, 24, 16), "dense layers per block")
    block_dilations: tuple[int, ...] = opt((1, 2, 2), "dilation of each block's k=3 convs")
    window: str = opt("povey", "Kaldi fbank window (3D-Speaker: povey)")
    scale: float = opt(1.0, "samples are multiplied by this before the fbank (3D-Speaker: 1)")

    def __post_init__(self) -> None:
        if self.n_mels % 8:
            raise ValueError(f"n_mels ({self.n_mels}) must be divisible by 8")
        if len(self.block_layers) != len(self.block_dilations):
            raise ValueError("block_layers and block_dilations need the same number of blocks")


@register_encoder("campplus")
class CAMPPlus(nn.Module):
    """CAM++ (7.2 M parameters at 512-d) on 3D-Speaker's Kaldi fbank front-end."""

    Options = CAMPPlusOptions

    def __init__(self, options: CAMPPlusOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = options.replace(**kwargs) if options else CAMPPlusOptions(**kwargs)
        self.config = {"name": "campplus", **o.to_dict()}
        self.sample_rate = int(o.sample_rate)
        self.embed_dim = int(o.embed_dim)
        self.frontend = KaldiFbank(o.sample_rate, o.n_mels, window=o.window, scale=o.scale)
        self.head = _FCM(o.n_mels, o.m_channels)
        xvector = nn.Sequential()
        xvector.add_module("tdnn", _TDNN(self.head.out_channels, o.init_channels, 5, stride=2))
        c = int(o.init_channels)
        growth, bn_channels = int(o.growth_rate), int(o.bn_size) * int(o.growth_rate)
        for i, (n, d) in enumerate(zip(o.block_layers, o.block_dilations, strict=True)):
            xvector.add_module(f"block{i + 1}", _DenseBlock(int(n), c, growth, bn_channels, 3, int(d)))
            c += int(n) * growth
            xvector.add_module(f"transit{i + 1}", _Transit(c, c // 2))
            c //= 2
        xvector.add_module("out_nonlinear", _bn_relu(c))
        xvector.add_module("stats", _StatsPool())
        xvector.add_module("dense", _Embedding(2 * c, self.embed_dim))
        self.xvector = xvector
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def embed_feats(self, feats: Tensor) -> Tensor:
        """(B, D) embeddings of (B, T, n_mels) features of equal length (3D-Speaker's model forward)."""
        return self.xvector(self.head(feats.transpose(1, 2)))

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        return by_length(self.embed_feats, self.frontend(wav, lengths))
