"""Additive angular margin softmax (ArcFace; Deng et al. 2019), the usual speaker-classification loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spkemb.losses._common import check_2d, float32_region


def add_angular_margin(cos: torch.Tensor, margin: float, easy_margin: bool = False) -> torch.Tensor:
    """``cos(theta + margin)`` from ``cos = cos(theta)``, computed without ``acos``.

    Where ``theta + margin`` would pass ``pi`` (so the function would stop decreasing in ``theta``)
    the usual ArcFace fallback ``cos(theta) - margin * sin(margin)`` is used instead; with
    ``easy_margin`` the margin is only applied where ``cos(theta) > 0``. With ``margin == 0`` the
    result is ``cos`` exactly.
    """
    if margin == 0:
        return cos
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    sin = (1.0 - cos * cos).clamp_min(1e-7).sqrt()  # floor keeps the gradient finite at |cos| = 1
    phi = cos * cos_m - sin * sin_m
    if easy_margin:
        return torch.where(cos > 0, phi, cos)
    th = math.cos(math.pi - margin)
    mm = math.sin(math.pi - margin) * margin
    return torch.where(cos > th, phi, cos - mm)


class AAMSoftmax(nn.Module):
    """Additive angular margin softmax with a learnable class weight matrix.

    ``forward(x, labels)`` with embeddings ``x`` of shape ``(B, embed_dim)`` and integer ``labels``
    ``(B,)`` in ``[0, n_classes)``. The logits are ``scale * cos(theta_j)`` for the other classes and
    ``scale * cos(theta_y + margin)`` for the true class ``y`` (``theta_j`` the angle between ``x``
    and class weight ``j``); the loss is their cross-entropy, averaged over the batch.

    Returns ``(loss, accuracy)``: ``loss`` a scalar with gradient, ``accuracy`` a detached scalar in
    ``[0, 1]``, the top-1 accuracy of the margin-free cosines (what classification would give).

    ``margin`` (and ``scale``) are plain attributes, settable at run time (margin warm-up). The
    class weights are ``self.weight``, shape ``(n_classes, embed_dim)``.
    """

    def __init__(
        self,
        embed_dim: int,
        n_classes: int,
        margin: float = 0.2,
        scale: float = 30.0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        if n_classes < 1 or embed_dim < 1:
            raise ValueError(f"embed_dim and n_classes must be >= 1, got {embed_dim} and {n_classes}")
        self.embed_dim = int(embed_dim)
        self.n_classes = int(n_classes)
        self.margin = float(margin)
        self.scale = float(scale)
        self.easy_margin = bool(easy_margin)
        self.weight = nn.Parameter(torch.empty(self.n_classes, self.embed_dim))
        nn.init.xavier_normal_(self.weight, gain=1.0)

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``(B, n_classes)`` between ``x`` and the class weights, in float32."""
        check_2d("x", x)
        with float32_region(x.device):
            return F.normalize(x.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels must be ({x.shape[0]},), got shape {tuple(labels.shape)}")
        labels = labels.long()
        with float32_region(x.device):
            cos = self.cosine(x)
            target_cos = cos.gather(1, labels[:, None])
            target_phi = add_angular_margin(target_cos, self.margin, self.easy_margin)
            logits = self.scale * cos.scatter(1, labels[:, None], target_phi)
            loss = F.cross_entropy(logits, labels)
            acc = (cos.detach().argmax(dim=1) == labels).float().mean()
            return loss, acc

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, n_classes={self.n_classes}, margin={self.margin}, "
            f"scale={self.scale}, easy_margin={self.easy_margin}"
        )
