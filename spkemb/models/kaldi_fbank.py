"""Kaldi-compatible log mel filterbanks (``torchaudio.compliance.kaldi.fbank``), one utterance at a time.

The front-end of the WeSpeaker and 3D-Speaker models: each peer computes ``kaldi.fbank`` on one
utterance (snip edges, DC offset removed, pre-emphasis 0.97, no dither at inference) and subtracts
its mean over time. :class:`KaldiFbank` does exactly that to each row of a padded batch on its own
valid samples, so a padded batch gives each utterance what it alone gives.

:func:`by_length` then runs a network on the utterances grouped by frame count (no padding ever
reaches the network), for the peer networks whose layers (convolutions over time, BatchNorm-free
averages, segment pooling) would see padding otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["KaldiFbank", "by_length"]

WINDOWS = ("hamming", "povey", "hanning", "rectangular", "blackman")


class KaldiFbank(nn.Module):
    """``kaldi.fbank`` of each utterance (samples times ``scale``), then mean subtraction over time.

    WeSpeaker: ``window="hamming", scale=32768``; 3D-Speaker: ``window="povey", scale=1``.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        window: str = "hamming",
        scale: float = 32768.0,
        mean_norm: bool = True,
    ) -> None:
        super().__init__()
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
        self.sample_rate = int(sample_rate)
        self.n_mels = int(n_mels)
        self.win_ms, self.hop_ms = float(win_ms), float(hop_ms)
        self.window = window
        self.scale = float(scale)
        self.mean_norm = bool(mean_norm)
        self.win = int(self.sample_rate * self.win_ms / 1000.0)

    @property
    def out_dim(self) -> int:
        return self.n_mels

    def one(self, wav: Tensor) -> Tensor:
        """(T, n_mels) features of one utterance (1-D samples)."""
        from torchaudio.compliance import kaldi

        wav = wav.float()
        if wav.numel() < self.win:  # kaldi.fbank returns no frame for a signal shorter than a window
            wav = nn.functional.pad(wav, (0, self.win - wav.numel()))
        feats = kaldi.fbank(
            (wav * self.scale).unsqueeze(0),
            num_mel_bins=self.n_mels,
            frame_length=self.win_ms,
            frame_shift=self.hop_ms,
            sample_frequency=float(self.sample_rate),
            window_type=self.window,
            dither=0.0,
        )
        if self.mean_norm:
            feats = feats - feats.mean(dim=0, keepdim=True)
        return feats

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> list[Tensor]:
        """One (T_i, n_mels) tensor per row of the (B, S) batch, from its first ``lengths[i]`` samples."""
        if wav.dim() == 1:
            wav = wav[None]
        with torch.autocast(device_type=wav.device.type, enabled=False):
            if lengths is None:
                return [self.one(row) for row in wav]
            return [self.one(row[: int(n)]) for row, n in zip(wav, lengths.tolist(), strict=True)]


def by_length(net: Callable[[Tensor], Tensor], feats: Sequence[Tensor]) -> Tensor:
    """``net`` on the (T_i, F) features stacked by equal T (so never on padding), rows in input order."""
    groups: dict[int, list[int]] = {}
    for i, f in enumerate(feats):
        groups.setdefault(int(f.shape[0]), []).append(i)
    out: list[Tensor | None] = [None] * len(feats)
    for idx in groups.values():
        emb = net(torch.stack([feats[i] for i in idx]))
        for j, i in enumerate(idx):
            out[i] = emb[j]
    return torch.stack([e for e in out if e is not None])
