"""``mfcc-stats``: a baseline with no learnable parameters.

The embedding of an utterance is the per-dimension mean and standard deviation of its MFCCs over
the valid frames (no voice-activity detection), 2 x ``n_mfcc`` values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from spkemb.features import MFCC
from spkemb.models.pooling import masked_mean_std, time_mask
from spkemb.models.registry import register_encoder
from spkemb.options import Options, opt

__all__ = ["MFCCStats", "MFCCStatsOptions"]


@dataclass
class MFCCStatsOptions(Options):
    """The MFCC-statistics baseline's options."""

    sample_rate: int = opt(16000, "input sample rate (Hz)")
    n_mfcc: int = opt(30, "cepstral coefficients (the embedding has twice as many values)")
    n_mels: int = opt(40, "mel filterbank channels")


@register_encoder("mfcc-stats")
class MFCCStats(nn.Module):
    """MFCC mean and standard deviation: a parameter-free, training-free baseline."""

    parameter_free = True

    Options = MFCCStatsOptions

    def __init__(self, options: MFCCStatsOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = options.replace(**kwargs) if options else MFCCStatsOptions(**kwargs)
        self.config = {"name": "mfcc-stats", **o.to_dict()}
        sample_rate, n_mfcc, n_mels = o.sample_rate, o.n_mfcc, o.n_mels
        self.sample_rate = int(sample_rate)
        self.embed_dim = 2 * int(n_mfcc)
        # No mean normalisation: the mean is half of the embedding.
        self.frontend = MFCC(sample_rate=sample_rate, n_mfcc=n_mfcc, n_mels=n_mels, mean_norm=False)

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        feats, frames = self.frontend(wav, lengths)
        x = feats.transpose(1, 2)
        mean, std = masked_mean_std(x, time_mask(None if lengths is None else frames, x.shape[2], x.dtype))
        return torch.cat([mean, std], dim=1)
