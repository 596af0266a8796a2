"""Contrastive equilibrium learning loss (Mun et al. 2020): uniformity + angular prototypical."""

from __future__ import annotations

import torch
from torch import nn

from spkemb.losses.angular_prototypical import AngularPrototypical
from spkemb.losses.uniformity import Uniformity


class CELoss(nn.Module):
    """``lambda_u * Uniformity(all crop embeddings) + lambda_s * AngularPrototypical(x)``.

    ``forward(x)`` with ``x`` of shape ``(N, M, D)`` (``N`` utterances x ``M >= 2`` crops); the
    uniformity term sees all ``N*M`` embeddings. Returns ``(loss, parts)`` where ``parts`` maps
    ``"uniformity"`` and ``"angular_prototypical"`` to the unweighted terms (detached scalars, for
    logging). The angular prototypical scale/bias are parameters of this module (``self.angproto``)
    and must be given to the optimiser.
    """

    def __init__(
        self,
        lambda_u: float = 1.0,
        lambda_s: float = 1.0,
        t: float = 2.0,
        init_scale: float = 10.0,
        init_bias: float = -5.0,
    ) -> None:
        super().__init__()
        self.lambda_u = float(lambda_u)
        self.lambda_s = float(lambda_s)
        self.uniformity = Uniformity(t=t)
        self.angproto = AngularPrototypical(init_scale=init_scale, init_bias=init_bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if x.dim() != 3 or x.shape[1] < 2:
            raise ValueError(f"input must be (N, M, D) with M >= 2 crops, got shape {tuple(x.shape)}")
        lu = self.uniformity(x.reshape(-1, x.shape[-1]))
        ls = self.angproto(x)
        loss = self.lambda_u * lu + self.lambda_s * ls
        return loss, {"uniformity": lu.detach(), "angular_prototypical": ls.detach()}

    def extra_repr(self) -> str:
        return f"lambda_u={self.lambda_u}, lambda_s={self.lambda_s}"
