"""TDNN x-vector encoder (Snyder et al., 2018) and the masked pooling helpers the encoders share.

Frame layers (context in frames): [-2,+2], {-2,0,+2}, {-3,0,+3}, {0}, {0}; each
Conv1d -> ReLU -> BatchNorm; statistics pooling (mean and standard deviation over the valid
frames); the 512-d segment-level affine layer gives the embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spkemb.features import Fbank, frame_mask
from spkemb.models.registry import register_encoder

__all__ = ["TDNN", "time_mask", "masked_mean_std", "downsample_lengths"]


def time_mask(frame_lengths: Tensor | None, num_frames: int, dtype: torch.dtype) -> Tensor | None:
    """(B, 1, T) mask (1 on valid frames) or ``None`` when there is no padding to mask."""
    if frame_lengths is None:
        return None
    frame_lengths = frame_lengths.clamp(max=num_frames)
    if bool((frame_lengths >= num_frames).all()):
        return None
    return frame_mask(frame_lengths, num_frames).unsqueeze(1).to(dtype)


def downsample_lengths(frame_lengths: Tensor | None, stride: int) -> Tensor | None:
    """Frames left after a stride-``stride`` layer with 'same' padding: ceil(L / stride)."""
    if frame_lengths is None or stride == 1:
        return frame_lengths
    return torch.div(frame_lengths + stride - 1, stride, rounding_mode="floor")


def masked_mean_std(x: Tensor, mask: Tensor | None, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of (B, D, T) ``x`` over time, on the frames where ``mask`` is 1.

    Computed in float32 whatever the input dtype.
    """
    x = x.float()
    if mask is None:
        # (torch.var_mean is several times slower than this on the CPU.)
        mean = x.mean(dim=2)
        var = torch.linalg.vecdot(x, x, dim=2) / x.shape[2] - mean.square()
        return mean, var.clamp(min=eps).sqrt()
    mask = mask.float()
    n = mask.sum(dim=2).clamp(min=1.0)  # (B, 1)
    mean = (x * mask).sum(dim=2) / n
    var = ((x - mean.unsqueeze(2)).square() * mask).sum(dim=2) / n
    return mean, var.clamp(min=eps).sqrt()


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

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        channels: int = 512,
        stats_channels: int = 1500,
        embed_dim: int = 512,
    ) -> None:
        super().__init__()
        self.config = {
            "name": "tdnn",
            "sample_rate": int(sample_rate),
            "n_mels": int(n_mels),
            "channels": int(channels),
            "stats_channels": int(stats_channels),
            "embed_dim": int(embed_dim),
        }
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
            if mask is not None and layer.conv.kernel_size[0] > 1:
                x = x * mask.to(x.dtype)
        mean, std = masked_mean_std(x, mask)
        return self.embedding(torch.cat([mean, std], dim=1))
