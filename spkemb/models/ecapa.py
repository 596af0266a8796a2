"""ECAPA-TDNN (Desplanques, Thienpondt and Demuynck, Interspeech 2020).

Fbank (80) -> Conv1d(k=5) -> 3 SE-Res2Blocks (k=3, dilation 2, 3, 4, scale 8) -> multi-layer
feature aggregation (concatenated block outputs -> 1x1 conv to 1536 channels) -> channel- and
context-dependent attentive statistics pooling -> BN -> FC -> BN (192-d).
Every conv is Conv1d -> ReLU -> BatchNorm, as in the paper.

Padding in a batch is handled exactly: the inputs of every conv wider than one frame are zeroed past
each utterance's end, squeeze-excitation and pooling average over the valid frames only, so a padded
batch gives the same embeddings as each utterance alone.

For speed the attention's global context (mean and std of each channel, constant over time) is not
concatenated to every frame: the first attention conv is applied to it once per utterance and added,
which is the same computation with a third of the work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spkemb.features import Fbank
from spkemb.models.registry import register_encoder
from spkemb.models.tdnn import masked_mean_std, time_mask

__all__ = ["ECAPA"]


class _ConvReluBn(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(torch.relu(self.conv(x)))


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, bottleneck)
        self.fc2 = nn.Linear(bottleneck, channels)

    def forward(self, x: Tensor, mask: Tensor | None, frames: Tensor | None) -> Tensor:
        if mask is None:
            s = x.mean(dim=2)
        else:
            s = (x * mask).sum(dim=2) / frames.to(x.dtype).unsqueeze(1)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s.unsqueeze(2)


class _SERes2Block(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int, scale: int, se_channels: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels ({channels}) must be divisible by scale ({scale})")
        width = channels // scale
        self.scale = scale
        self.conv1 = _ConvReluBn(channels, channels)
        self.res2 = nn.ModuleList(_ConvReluBn(width, width, kernel, dilation) for _ in range(scale - 1))
        self.conv3 = _ConvReluBn(channels, channels)
        self.se = _SqueezeExcite(channels, se_channels)

    def forward(self, x: Tensor, mask: Tensor | None, frames: Tensor | None) -> Tensor:
        h = self.conv1(x)
        if mask is not None:
            h = h * mask
        parts = h.chunk(self.scale, dim=1)
        outs = [parts[0]]
        y = None
        for i, conv in enumerate(self.res2, start=1):
            y = conv(parts[i] if y is None else parts[i] + y)
            if mask is not None:
                y = y * mask
            outs.append(y)
        h = self.conv3(torch.cat(outs, dim=1))
        return self.se(h, mask, frames) + x


class _AttentiveStatsPool(nn.Module):
    """Channel- and context-dependent attentive statistics pooling (global context on)."""

    def __init__(self, channels: int, attention_channels: int, global_context: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.global_context = global_context
        cin = 3 * channels if global_context else channels
        self.attn = _ConvReluBn(cin, attention_channels)
        self.attn_out = nn.Conv1d(attention_channels, channels, 1)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        conv = self.attn.conv
        if self.global_context:
            mean, std = masked_mean_std(x, mask)
            c = self.channels
            w = conv.weight[:, :, 0]  # (A, 3C)
            # conv(cat([x, mean, std])) == conv_x(x) + (W_mean mean + W_std std + b), once per utterance.
            ctx = torch.cat([mean, std], dim=1).to(x.dtype) @ w[:, c:].t().to(x.dtype)
            a = F.conv1d(x, conv.weight[:, :c], conv.bias) + ctx.to(x.dtype).unsqueeze(2)
        else:
            a = conv(x)
        a = self.attn_out(torch.tanh(self.attn.bn(torch.relu(a))))
        a = a.float()
        if mask is not None:
            a = a.masked_fill(mask == 0, float("-inf"))
        w = torch.softmax(a, dim=2)
        xf = x.float()
        mu = (w * xf).sum(dim=2)
        var = (w * xf.square()).sum(dim=2) - mu.square()
        return torch.cat([mu, var.clamp(min=1e-5).sqrt()], dim=1)


@register_encoder("ecapa")
class ECAPA(nn.Module):
    """ECAPA-TDNN: ``channels`` 512 (or 1024), ``embed_dim`` 192."""

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        channels: int = 512,
        embed_dim: int = 192,
        mfa_channels: int | None = None,  # 1536 (the paper's, for C=512 and C=1024)
        attention_channels: int = 128,
        se_channels: int = 128,
        scale: int = 8,
        global_context: bool = True,
    ) -> None:
        super().__init__()
        mfa_channels = 1536 if mfa_channels is None else int(mfa_channels)
        self.config = {
            "name": "ecapa",
            "sample_rate": int(sample_rate),
            "n_mels": int(n_mels),
            "channels": int(channels),
            "embed_dim": int(embed_dim),
            "mfa_channels": mfa_channels,
            "attention_channels": int(attention_channels),
            "se_channels": int(se_channels),
            "scale": int(scale),
            "global_context": bool(global_context),
        }
        self.sample_rate = int(sample_rate)
        self.embed_dim = int(embed_dim)
        self.frontend = Fbank(sample_rate=sample_rate, n_mels=n_mels)
        self.layer1 = _ConvReluBn(n_mels, channels, kernel=5)
        self.blocks = nn.ModuleList(
            _SERes2Block(channels, 3, d, scale, se_channels) for d in (2, 3, 4)
        )
        self.mfa = _ConvReluBn(3 * channels, mfa_channels)
        self.pool = _AttentiveStatsPool(mfa_channels, attention_channels, global_context)
        self.pool_bn = nn.BatchNorm1d(2 * mfa_channels)
        self.fc = nn.Linear(2 * mfa_channels, embed_dim)
        self.emb_bn = nn.BatchNorm1d(embed_dim)

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        feats, frames = self.frontend(wav, lengths)
        x = feats.transpose(1, 2)  # (B, n_mels, T)
        mask = time_mask(None if lengths is None else frames, x.shape[2], x.dtype)
        if mask is None:
            frames = None
        x = self.layer1(x)
        if mask is not None:
            mask = mask.to(x.dtype)
            x = x * mask
        outs = []
        for block in self.blocks:
            x = block(x, mask, frames)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=1))
        pooled = self.pool(x, mask)
        return self.emb_bn(self.fc(self.pool_bn(pooled)))
