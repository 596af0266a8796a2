"""SpeechBrain's ECAPA-TDNN (``speechbrain.lobes.models.ECAPA_TDNN``) with its own front-end.

This is the network of SpeechBrain's ``spkrec-ecapa-voxceleb`` recipe, written here so that its
weights give the same embeddings: ``spkemb import-model speechbrain`` fills it from a checkpoint.
It differs from :mod:`spkemb.models.ecapa` where SpeechBrain's model does:

* front-end: SpeechBrain's ``Fbank`` (centred STFT, n_fft 400, periodic Hamming window, power
  spectrum, its triangular mel filters from 0 Hz to Nyquist, 10*log10 floored at 1e-10 and clipped
  to 80 dB below the utterance's maximum) then sentence mean normalisation (``InputNormalization``,
  ``norm_type="sentence"``, no variance normalisation);
* every convolution pads its input by reflection ("same" padding, ``padding_mode="reflect"``);
* the multi-layer aggregation width is an option (3072 = 3C in the published C=1024 model);
* the embedding is the last linear layer's output (no batch norm after it), less the stored global
  embedding mean (``mean_var_norm_emb``; zeros, i.e. nothing, unless imported).

Batches with padding give each utterance's own embedding: every layer reflects at the utterance's
own last frame, and the squeeze-excitation and pooling statistics use the valid frames only.
Activations are channel-major (B, C, T), as in SpeechBrain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spkemb.features import frame_mask
from spkemb.models.registry import register_encoder
from spkemb.options import Options, opt

__all__ = ["SpeechBrainECAPA", "SpeechBrainFbank"]

AMIN = 1e-10  # SpeechBrain Filterbank's amin
STATS_EPS = 1e-12  # SpeechBrain AttentiveStatisticsPooling's eps


def _mel(hz: float) -> float:
    return 2595 * math.log10(1 + hz / 700)


def speechbrain_mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> Tensor:
    """(n_fft//2 + 1, n_mels) filters of SpeechBrain's ``Filterbank`` (triangular, 0 Hz to Nyquist):
    symmetric triangles centred on mel-spaced frequencies, half-width the spacing below each centre."""
    mel = torch.linspace(_mel(0.0), _mel(sample_rate // 2), n_mels + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    band = (hz[1:] - hz[:-1])[:-1]
    central = hz[1:-1]
    freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    slope = (freqs[None, :] - central[:, None]) / band[:, None]
    return torch.clamp(torch.minimum(slope + 1.0, 1.0 - slope), min=0.0).t().contiguous()


class SpeechBrainFbank(nn.Module):
    """SpeechBrain's ``Fbank`` + sentence ``InputNormalization``: (B, S) -> ((B, T, n_mels), frames).

    An utterance of n samples has 1 + n // hop frames (centred STFT); frames past it are 0.
    """

    window: Tensor
    filters: Tensor

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, top_db: float = 80.0) -> None:
        super().__init__()
        self.sample_rate, self.n_mels, self.top_db = int(sample_rate), int(n_mels), float(top_db)
        self.win = int(round(self.sample_rate * 25 / 1000.0))
        self.hop = int(round(self.sample_rate * 10 / 1000.0))
        self.n_fft = 400  # SpeechBrain Fbank's default, whatever the rate
        self.register_buffer("window", torch.hamming_window(self.win), persistent=False)
        self.register_buffer(
            "filters", speechbrain_mel_filters(self.sample_rate, self.n_fft, self.n_mels), persistent=False
        )

    def frames(self, lengths: Tensor) -> Tensor:
        """Valid frames of utterances of ``lengths`` samples."""
        return torch.div(lengths, self.hop, rounding_mode="floor").long() + 1

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        wav = wav.float()
        with torch.autocast(wav.device.type, enabled=False):
            spec = torch.stft(
                wav, self.n_fft, self.hop, self.win, self.window, center=True, pad_mode="constant",
                normalized=False, onesided=True, return_complex=True,
            )  # fmt: skip
            power = torch.view_as_real(spec).pow(2).sum(-1).transpose(1, 2)  # (B, T, F)
            db = 10.0 * torch.log10(torch.clamp(power @ self.filters, min=AMIN))
            B, T, _ = db.shape
            full = torch.full((B,), T, dtype=torch.long, device=wav.device)
            frames = full if lengths is None else self.frames(lengths.to(wav.device)).clamp(max=T)
            valid = frame_mask(frames, T).unsqueeze(2)  # (B, T, 1)
            peak = db.masked_fill(~valid, float("-inf")).amax(dim=(1, 2)) - self.top_db
            db = torch.maximum(db, peak.view(B, 1, 1))
            n = frames.to(db.dtype).view(B, 1, 1)
            mean = (db * valid).sum(dim=1, keepdim=True) / n
            return (db - mean) * valid, frames


def _reflect_pad(x: Tensor, pad: int, frames: Tensor | None) -> Tensor:
    """(B, C, T) padded by ``pad`` frames each side by reflection at each row's own valid end."""
    if pad == 0:
        return x
    if frames is None:
        return F.pad(x, (pad, pad), mode="reflect")
    B, C, T = x.shape
    j = torch.arange(-pad, T + pad, device=x.device).abs()
    last = (frames - 1).view(B, 1)
    idx = torch.where(j > last, 2 * last - j, j).clamp(0, T - 1)
    return x.gather(2, idx.unsqueeze(1).expand(B, C, T + 2 * pad))


class _TDNN(nn.Module):
    """Conv1d ("same" reflect padding) -> ReLU -> BatchNorm, SpeechBrain's ``TDNNBlock``."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.pad = dilation * (kernel - 1) // 2
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: Tensor, frames: Tensor | None = None) -> Tensor:
        return self.bn(torch.relu(self.conv(_reflect_pad(x, self.pad, frames))))


def _valid_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """(B, C, T) -> (B, C, 1), the mean over the valid frames."""
    if mask is None:
        return x.mean(dim=2, keepdim=True)
    return (x * mask).sum(dim=2, keepdim=True) / mask.sum(dim=2, keepdim=True)


class _SEBlock(nn.Module):
    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, se_channels)
        self.fc2 = nn.Linear(se_channels, channels)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        s = _valid_mean(x, mask).squeeze(2)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return s.unsqueeze(2) * x


class _SERes2Block(nn.Module):
    def __init__(self, channels: int, dilation: int, scale: int, se_channels: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels ({channels}) must be divisible by scale ({scale})")
        self.scale = scale
        width = channels // scale
        self.tdnn1 = _TDNN(channels, channels)
        self.res2 = nn.ModuleList(_TDNN(width, width, 3, dilation) for _ in range(scale - 1))
        self.tdnn2 = _TDNN(channels, channels)
        self.se = _SEBlock(channels, se_channels)

    def forward(self, x: Tensor, frames: Tensor | None, mask: Tensor | None) -> Tensor:
        parts = self.tdnn1(x).chunk(self.scale, dim=1)
        outs, y = [parts[0]], None
        for i, layer in enumerate(self.res2, start=1):
            y = layer(parts[i] if y is None else parts[i] + y, frames)
            outs.append(y)
        return self.se(self.tdnn2(torch.cat(outs, dim=1)), mask) + x


class _AttentiveStats(nn.Module):
    """SpeechBrain's ``AttentiveStatisticsPooling`` (global context): (B, C, T) -> (B, 2C)."""

    def __init__(self, channels: int, attention_channels: int, global_context: bool) -> None:
        super().__init__()
        self.global_context = global_context
        self.tdnn = _TDNN(3 * channels if global_context else channels, attention_channels)
        self.conv = nn.Conv1d(attention_channels, channels, 1)

    @staticmethod
    def _stats(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        mean = (w * x).sum(dim=2)
        std = torch.sqrt((w * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2).clamp(STATS_EPS))
        return mean, std

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        T = x.shape[2]
        m = torch.ones_like(x[:, :1]) if mask is None else mask
        attn = x
        if self.global_context:
            mean, std = self._stats(x, m / m.sum(dim=2, keepdim=True))
            attn = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, T), std.unsqueeze(2).expand(-1, -1, T)], dim=1)
        attn = self.conv(torch.tanh(self.tdnn(attn)))
        if mask is not None:
            attn = attn.masked_fill(mask == 0, float("-inf"))
        mean, std = self._stats(x, torch.softmax(attn, dim=2))
        return torch.cat([mean, std], dim=1)


@dataclass
class SpeechBrainECAPAOptions(Options):
    """Options of SpeechBrain's ECAPA-TDNN (its ``ECAPA_TDNN`` arguments; import fills them in)."""

    sample_rate: int = opt(16000, "input sample rate (Hz)")
    n_mels: int = opt(80, "mel filterbank channels (SpeechBrain Fbank)")
    channels: int = opt(1024, "C, channels of the SE-Res2 blocks (1024 in spkrec-ecapa-voxceleb)")
    mfa_channels: int = opt(3072, "multi-layer feature aggregation channels (3072 in spkrec-ecapa-voxceleb)")
    attention_channels: int = opt(128, "attentive statistics pooling bottleneck")
    se_channels: int = opt(128, "squeeze-excitation bottleneck")
    scale: int = opt(8, "Res2Net scale (channels must divide by it)")
    embed_dim: int = opt(192, "embedding size (lin_neurons)")
    global_context: bool = opt(True, "attention sees utterance-level mean and std")
    emb_std_norm: bool = opt(False, "divide by the stored embedding std too (mean_var_norm_emb std_norm)")

    def __post_init__(self) -> None:
        if self.channels % self.scale:
            raise ValueError(f"channels ({self.channels}) must be divisible by scale ({self.scale})")


@register_encoder("speechbrain-ecapa")
class SpeechBrainECAPA(nn.Module):
    """SpeechBrain's ECAPA-TDNN with its Fbank front-end (``spkemb import-model speechbrain``)."""

    Options = SpeechBrainECAPAOptions
    emb_mean: Tensor
    emb_std: Tensor

    def __init__(self, options: SpeechBrainECAPAOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = options.replace(**kwargs) if options else SpeechBrainECAPAOptions(**kwargs)
        self.config = {"name": "speechbrain-ecapa", **o.to_dict()}
        self.sample_rate, self.embed_dim = int(o.sample_rate), int(o.embed_dim)
        C, mfa = o.channels, o.mfa_channels
        self.frontend = SpeechBrainFbank(o.sample_rate, o.n_mels)
        self.layer1 = _TDNN(o.n_mels, C, 5, 1)
        self.blocks = nn.ModuleList(_SERes2Block(C, d, o.scale, o.se_channels) for d in (2, 3, 4))
        self.mfa = _TDNN(3 * C, mfa)
        self.pool = _AttentiveStats(mfa, o.attention_channels, o.global_context)
        self.pool_bn = nn.BatchNorm1d(2 * mfa)
        self.fc = nn.Linear(2 * mfa, o.embed_dim)
        self.emb_std_norm = bool(o.emb_std_norm)
        self.register_buffer("emb_mean", torch.zeros(o.embed_dim))
        self.register_buffer("emb_std", torch.ones(o.embed_dim))

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        x, frames = self.frontend(wav, lengths)  # (B, T, n_mels)
        T = x.shape[1]
        valid: Tensor | None = None if bool((frames >= T).all()) else frames
        mask = None if valid is None else frame_mask(valid, T).unsqueeze(1).to(x.dtype)  # (B, 1, T)
        x = self.layer1(x.transpose(1, 2), valid)
        outs = []
        for block in self.blocks:
            x = block(x, valid, mask)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=1))
        emb = self.fc(self.pool_bn(self.pool(x, mask)))
        emb = emb - self.emb_mean
        if self.emb_std_norm:
            emb = emb / self.emb_std.clamp(min=AMIN)
        return emb
