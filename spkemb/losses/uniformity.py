"""Uniformity loss (Wang & Isola 2020), as used by contrastive equilibrium learning (Mun et al. 2020)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spkemb.losses._common import check_2d, float32_region


class Uniformity(nn.Module):
    """``log E_{i<j} exp(-t ||z_i - z_j||^2)`` over L2-normalised embeddings.

    ``forward(z)`` with ``z`` of shape ``(N, D)``, ``N >= 2``; returns a scalar <= 0 (0 when all
    embeddings coincide; minimising it spreads them over the hypersphere). On the unit sphere
    ``||z_i - z_j||^2 = 2 - 2 z_i·z_j``, which is what is computed (no square root, so the gradient is
    finite even for identical embeddings); the mean over the ``N(N-1)/2`` pairs is taken with a
    log-sum-exp.
    """

    def __init__(self, t: float = 2.0) -> None:
        super().__init__()
        if t <= 0:
            raise ValueError(f"t must be > 0, got {t}")
        self.t = float(t)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_2d("z", z)
        n = z.shape[0]
        if n < 2:
            raise ValueError(f"uniformity needs at least 2 embeddings, got {n}")
        with float32_region(z.device):
            z = F.normalize(z.float(), dim=1)
            i, j = torch.triu_indices(n, n, offset=1, device=z.device)
            sq = (2.0 - 2.0 * (z[i] * z[j]).sum(dim=1)).clamp_min(0.0)
            return torch.logsumexp(-self.t * sq, dim=0) - math.log(sq.numel())

    def extra_repr(self) -> str:
        return f"t={self.t}"
