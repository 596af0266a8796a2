"""Angular prototypical loss (Chung et al. 2020, "In defence of metric learning for speaker
recognition"), as used by contrastive equilibrium learning (Mun et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spkemb.losses._common import float32_region


class AngularPrototypical(nn.Module):
    """Angular prototypical loss with a learnable scale and bias.

    ``forward(x)`` with ``x`` of shape ``(N, M, D)``: ``N`` classes (speakers; in the unsupervised
    setting, utterances) times ``M >= 2`` embeddings (crops) each. For class ``i`` the query is crop
    0 and the prototype is the mean (centroid) of crops ``1..M-1``. The logits are
    ``w * cos(query_i, prototype_j) + b`` (an ``N x N`` matrix, rows are queries) with learnable
    ``w`` (clamped to ``>= 1e-6``) and ``b``; the loss is the cross-entropy with the diagonal as
    target, averaged over the ``N`` queries. Returns a scalar.
    """

    def __init__(self, init_scale: float = 10.0, init_bias: float = -5.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(init_scale)))
        self.b = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] < 2:
            raise ValueError(f"input must be (N, M, D) with M >= 2 crops, got shape {tuple(x.shape)}")
        with float32_region(x.device):
            x = x.float()
            query = F.normalize(x[:, 0], dim=1)
            proto = F.normalize(x[:, 1:].mean(dim=1), dim=1)
            cos = query @ proto.t()
            logits = cos * self.w.float().clamp_min(1e-6) + self.b.float()
            target = torch.arange(x.shape[0], device=x.device)
            return F.cross_entropy(logits, target)
