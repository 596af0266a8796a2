"""Additive angular margin softmax (ArcFace; Deng et al. 2019), the usual speaker-classification loss,
and the margin warm-up that speaker recipes pair with it (WeSpeaker's ``MarginScheduler``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

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


@dataclass
class AAMOutput:
    """Everything one AAM forward pass yields (see :meth:`AAMSoftmax.detailed`).

    ``loss``: scalar with gradient, the mean of ``per_sample`` over the kept rows (a zero that still
    carries a graph when none is kept). ``acc``: detached top-1 accuracy of the margin-free cosines
    over *all* rows. ``per_sample`` ``(B,)``: detached cross-entropy of every row (with margin),
    what a loss gate fits. ``pred`` ``(B,)``: margin-free argmax class; ``conf`` ``(B,)``: its
    margin-free softmax probability ``softmax(scale * cos)`` (for label correction). ``kept``
    ``(B,)`` bool: the rows the loss averaged over.
    """

    loss: torch.Tensor
    acc: torch.Tensor
    per_sample: torch.Tensor
    pred: torch.Tensor
    conf: torch.Tensor
    kept: torch.Tensor


class AAMSoftmax(nn.Module):
    """Additive angular margin softmax with a learnable class weight matrix.

    ``forward(x, labels, keep=None)`` with embeddings ``x`` of shape ``(B, embed_dim)`` and integer
    ``labels`` ``(B,)`` in ``[0, n_classes)``. The logits are ``scale * cos(theta_j)`` for the other
    classes and ``scale * cos(theta_y + margin)`` for the true class ``y`` (``theta_j`` the angle
    between ``x`` and class weight ``j``); the loss is their cross-entropy, averaged over the batch,
    or over the rows where the optional bool mask ``keep`` ``(B,)`` is true (a loss gate).

    Returns ``(loss, accuracy)``: ``loss`` a scalar with gradient, ``accuracy`` a detached scalar in
    ``[0, 1]``, the top-1 accuracy of the margin-free cosines (what classification would give).
    :meth:`detailed` returns an :class:`AAMOutput` with per-sample losses and predictions too.

    ``margin`` (and ``scale``) are plain attributes, settable at run time (margin warm-up: see
    :class:`MarginScheduler`). The class weights are ``self.weight``, shape ``(n_classes, embed_dim)``.
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

    def set_margin(self, margin: float) -> None:
        self.margin = float(margin)

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``(B, n_classes)`` between ``x`` and the class weights, in float32."""
        check_2d("x", x)
        with float32_region(x.device):
            return F.normalize(x.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``scale *`` the cosines ``(B, n_classes)`` with the margin added to each row's true class."""
        target_cos = cos.gather(1, labels[:, None])
        target_phi = add_angular_margin(target_cos, self.margin, self.easy_margin)
        return self.scale * cos.scatter(1, labels[:, None], target_phi)

    def logits(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The logits ``(B, n_classes)`` the cross-entropy sees (float32, with margin)."""
        labels = self._check_labels(x, labels)
        with float32_region(x.device):
            return self.margin_logits(self.cosine(x), labels)

    def _check_labels(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels must be ({x.shape[0]},), got shape {tuple(labels.shape)}")
        return labels.long().to(x.device)

    def _cos_and_keep(
        self, x: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class cosines and the rows to keep; sub-centre AAM overrides this (outlier dropping)."""
        return self.cosine(x), keep

    def detailed(self, x: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None = None) -> AAMOutput:
        """The loss with its per-sample parts (see :class:`AAMOutput`)."""
        labels = self._check_labels(x, labels)
        if keep is not None and keep.shape != labels.shape:
            raise ValueError(f"keep must be ({labels.shape[0]},), got shape {tuple(keep.shape)}")
        with float32_region(x.device):
            cos, keep = self._cos_and_keep(x, labels, keep)
            per_sample = F.cross_entropy(self.margin_logits(cos, labels), labels, reduction="none")
            if keep is None:
                kept = torch.ones_like(labels, dtype=torch.bool)
                loss = per_sample.mean()
            else:
                kept = keep.to(device=x.device, dtype=torch.bool)
                loss = (per_sample * kept).sum() / kept.sum().clamp_min(1)
            with torch.no_grad():
                conf, pred = torch.softmax(self.scale * cos, dim=1).max(dim=1)
                acc = (pred == labels).float().mean()
            return AAMOutput(loss, acc, per_sample.detach(), pred, conf, kept)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.detailed(x, labels, keep)
        return out.loss, out.acc

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, n_classes={self.n_classes}, margin={self.margin}, "
            f"scale={self.scale}, easy_margin={self.easy_margin}"
        )


class HasMargin(Protocol):
    margin: float


@dataclass
class MarginScheduler:
    """Margin warm-up: ``initial`` until ``hold``, then up to ``final`` over ``ramp``, then ``final``.

    ``t`` (and so ``hold`` and ``ramp``) is in whatever unit the caller counts: optimiser steps,
    epochs, or the trainer's ``progress`` (the fraction of the run done, in [0, 1], which also
    works for time-bounded runs). During the ramp, with ``u = (t - hold) / ramp`` in [0, 1]:

    - ``kind="linear"``: ``margin = initial + (final - initial) * u``;
    - ``kind="exp"`` (WeSpeaker's default): ``margin = initial + (final - initial) * (1 - 1e-3 ** u)``,
      fast at first and flattening out (it reaches 99.9% of the way at the end of the ramp, and
      ``final`` exactly after it).

    ``ramp=0`` jumps from ``initial`` to ``final`` at ``hold``. :meth:`apply` sets the ``margin``
    attribute of a loss (every loss here has one) and returns the value, for logging.
    """

    final: float = 0.2
    initial: float = 0.0
    hold: float = 0.0
    ramp: float = 0.0
    kind: Literal["exp", "linear"] = "exp"

    def __post_init__(self) -> None:
        if self.hold < 0 or self.ramp < 0:
            raise ValueError(f"hold and ramp must be >= 0, got {self.hold} and {self.ramp}")
        if self.kind not in ("exp", "linear"):
            raise ValueError(f"kind must be 'exp' or 'linear', got {self.kind!r}")

    def __call__(self, t: float) -> float:
        if t < self.hold:
            return float(self.initial)
        if self.ramp == 0 or t >= self.hold + self.ramp:
            return float(self.final)
        u = (t - self.hold) / self.ramp
        ratio = u if self.kind == "linear" else 1.0 - 1e-3**u
        return float(self.initial + (self.final - self.initial) * ratio)

    def apply(self, loss: HasMargin, t: float) -> float:
        m = self(t)
        loss.margin = m
        return m
