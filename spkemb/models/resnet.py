"""Thin ResNet34 speaker encoder (the r-vector / VoxCeleb-recipe "ResNet34" with 32 base channels).

Fbank (B, T, F) is treated as a one-channel image (B, 1, F, T); four stages of basic blocks
([3, 4, 6, 3], channels 32-64-128-256, stride 2 from the second stage on, in both frequency and
time); statistics pooling (mean and std over the valid frames) of the flattened channel x frequency
maps; a linear layer gives the ``embed_dim`` (256) embedding.

Padded frames are zeroed before every 3x3 convolution so that a padded batch gives the same result
as each utterance alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from spkemb.features import Fbank
from spkemb.models.pooling import downsample_lengths, masked_mean_std, time_mask
from spkemb.models.registry import register_encoder
from spkemb.options import Options, opt

__all__ = ["ResNet"]


def _mask4(frames: Tensor | None, num_frames: int, dtype: torch.dtype) -> Tensor | None:
    m = time_mask(frames, num_frames, dtype)
    return None if m is None else m.unsqueeze(1)  # (B, 1, 1, T)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.stride = stride

    def forward(self, x: Tensor, frames: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``x`` is zero past each utterance's ``frames``; so is the result (with the new lengths)."""
        frames = downsample_lengths(frames, self.stride)
        h = torch.relu(self.bn1(self.conv1(x)))
        mask = _mask4(frames, h.shape[3], h.dtype)
        if mask is not None:
            h = h * mask
        h = self.bn2(self.conv2(h))
        h = torch.relu(h + (x if self.shortcut is None else self.shortcut(x)))
        if mask is not None:
            h = h * mask
        return h, frames


@dataclass
class ResNetOptions(Options):
    """The thin ResNet's options."""

    sample_rate: int = opt(16000, "input sample rate (Hz)")
    n_mels: int = opt(80, "log-mel filterbank channels")
    base_channels: int = opt(32, "channels of the first stage (doubled at each stage)")
    embed_dim: int = opt(256, "embedding size")
    layers: tuple[int, ...] = opt((3, 4, 6, 3), "residual blocks per stage (3, 4, 6, 3 = ResNet34)")


@register_encoder("resnet34")
class ResNet(nn.Module):
    """Thin ResNet34 (base 32 channels) with masked statistics pooling; 256-d output."""

    Options = ResNetOptions

    def __init__(self, options: ResNetOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = options.replace(**kwargs) if options else ResNetOptions(**kwargs)
        self.config = {"name": "resnet34", **o.to_dict()}
        sample_rate, n_mels, base_channels, embed_dim = o.sample_rate, o.n_mels, o.base_channels, o.embed_dim
        layers = [int(n) for n in o.layers]
        self.sample_rate = int(sample_rate)
        self.embed_dim = int(embed_dim)
        self.frontend = Fbank(sample_rate=sample_rate, n_mels=n_mels)
        self.conv1 = nn.Conv2d(1, base_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base_channels)
        blocks = []
        cin = base_channels
        freq = int(n_mels)
        for stage, n in enumerate(layers):
            cout = base_channels * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_BasicBlock(cin, cout, stride))
                if stride == 2:
                    freq = (freq + 1) // 2
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.stats_dim = cin * freq
        self.embedding = nn.Linear(2 * self.stats_dim, embed_dim)

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        feats, frames = self.frontend(wav, lengths)
        if lengths is None:
            frames = None
        # (B, 1, F, T), channels-last: oneDNN's (and cuDNN's) fast layout for these convolutions.
        x = feats.transpose(1, 2).unsqueeze(1).contiguous(memory_format=torch.channels_last)
        x = torch.relu(self.bn1(self.conv1(x)))
        mask = _mask4(frames, x.shape[3], x.dtype)
        if mask is not None:
            x = x * mask
        for block in self.blocks:
            x, frames = block(x, frames)
        B, C, Fq, T = x.shape
        x = x.reshape(B, C * Fq, T)
        mean, std = masked_mean_std(x, time_mask(frames, T, x.dtype))
        return self.embedding(torch.cat([mean, std], dim=1).to(self.embedding.weight.dtype))
