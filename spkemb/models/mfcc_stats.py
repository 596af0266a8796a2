"""``mfcc-stats``: a baseline with no learnable parameters.

The embedding of an utterance is the per-dimension mean and standard deviation of its MFCCs over
the valid frames (no voice-activity detection), 2 x ``n_mfcc`` values.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spkemb.features import MFCC
from spkemb.models.registry import register_encoder
from spkemb.models.tdnn import masked_mean_std, time_mask

__all__ = ["MFCCStats"]


@register_encoder("mfcc-stats")
class MFCCStats(nn.Module):
    """MFCC mean and standard deviation: a parameter-free, training-free baseline."""

    parameter_free = True

    def __init__(self, sample_rate: int = 16000, n_mfcc: int = 30, n_mels: int = 40) -> None:
        super().__init__()
        self.config = {"name": "mfcc-stats", "sample_rate": int(sample_rate), "n_mfcc": int(n_mfcc),
                       "n_mels": int(n_mels)}  # fmt: skip
        self.sample_rate = int(sample_rate)
        self.embed_dim = 2 * int(n_mfcc)
        # No mean normalisation: the mean is half of the embedding.
        self.frontend = MFCC(sample_rate=sample_rate, n_mfcc=n_mfcc, n_mels=n_mels, mean_norm=False)

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        feats, frames = self.frontend(wav, lengths)
        x = feats.transpose(1, 2)
        mean, std = masked_mean_std(x, time_mask(None if lengths is None else frames, x.shape[2], x.dtype))
        return torch.cat([mean, std], dim=1)
