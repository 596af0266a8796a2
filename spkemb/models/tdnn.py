"""TDNN x-vector encoder (Snyder et al., 2018).

Frame layers (context in frames): [-2,+2], {-2,0,+2}, {-3,0,+3}, {0}, {0}; each
Conv1d -> ReLU -> BatchNorm; statistics pooling (mean and standard deviation over the valid
frames); the 512-d segment-level affine layer gives the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from spkemb.features import Fbank
from spkemb.models.pooling import masked_mean_std, time_mask
from spkemb.models.registry import register_encoder
from spkemb.options import Options, opt

__all__ = ["TDNN", "TDNNOptions"]


@dataclass
class TDNNOptions(Options):
    """The x-vector TDNN's options."""

    sample_rate: int = opt(16000, "input sample rate (Hz)")
    n_mels: int = opt(80, "log-mel filterbank channels")
    channels: int = opt(512, "frame-layer channels")
    stats_channels: int = opt(1500, "channels of the layer before pooling")
    embed_dim: int = opt(512, "embedding size")


class _TdnnLayer(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(torch.relu(self.conv(x)))


@register_encoder("tdnn")
class TDNN(nn.Module):
    """x-vector TDNN with masked statistics pooling; ``embed_dim``-d (default 512) output."""

    Options = TDNNOptions

    def __init__(self, options: TDNNOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = options.replace(**kwargs) if options else TDNNOptions(**kwargs)
        self.config = {"name": "tdnn", **o.to_dict()}
        sample_rate, n_mels, channels, stats_channels, embed_dim = (
            o.sample_rate,
            o.n_mels,
            o.channels,
            o.stats_channels,
            o.embed_dim,
        )
        self.sample_rate = int(sample_rate)
        self.embed_dim = int(embed_dim)
        self.frontend = Fbank(sample_rate=sample_rate, n_mels=n_mels)
        spec = [(n_mels, channels, 5, 1), (channels, channels, 3, 2), (channels, channels, 3, 3),
                (channels, channels, 1, 1), (channels, stats_channels, 1, 1)]  # fmt: skip
        self.layers = nn.ModuleList(_TdnnLayer(*s) for s in spec)
        self.embedding = nn.Linear(2 * stats_channels, embed_dim)

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        feats, frames = self.frontend(wav, lengths)
        x = feats.transpose(1, 2)  # (B, n_mels, T)
        mask = time_mask(None if lengths is None else frames, x.shape[2], x.dtype)
        for layer in self.layers:
            x = layer(x)
            if mask is not None and layer.conv.kernel_size[0] > 1:  # type: ignore[union-attr,index]
                x = x * mask.to(x.dtype)
        mean, std = masked_mean_std(x, mask)
        return self.embedding(torch.cat([mean, std], dim=1))
