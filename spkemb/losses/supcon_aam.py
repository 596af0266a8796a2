"""Supervised contrastive loss (Khosla et al. 2020) with an additive angular margin on the positive
pairs (for speakers: Li et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spkemb.losses._common import float32_region
from spkemb.losses.aam import AAMOutput, AAMSoftmax, add_angular_margin


class SupConAAM(nn.Module):
    """SupCon "L_out" over L2-normalised embeddings, with ``cos(theta + margin)`` for positives.

    ``forward(z, labels)``: ``z`` of shape ``(N, D)`` with integer ``labels`` ``(N,)`` (e.g. the
    augmented views of a batch, stacked); or ``z`` of shape ``(B, V, D)`` (``V`` views of ``B``
    examples) with ``labels`` ``(B,)``, or ``labels=None`` to make every example its own class.

    Precisely: with ``c_ij = z_i·z_j`` (cosine, embeddings normalised here), ``P(i) = {p != i :
    y_p = y_i}`` and ``A(i) = {a != i}``, the logit of pair ``(i, a)`` is

        l_ia = s * cos(theta_ia + m)   if a in P(i)      (positive: additive angular margin)
        l_ia = s * c_ia                otherwise          (negative)

    and ``loss_i = -1/|P(i)| * sum_{p in P(i)} [ l_ip - log sum_{a in A(i)} exp(l_ia) ]``, i.e. the
    summation over positives sits *outside* the log (Khosla et al.'s L_out), and every denominator
    holds all other samples: all negatives and all positives, the positives with their margin. The
    loss is the mean of ``loss_i`` over the anchors with ``|P(i)| >= 1``; anchors without a positive
    are skipped (if none has one, the result is a zero that still carries a graph). ``s = scale``
    is ``1 / temperature``; give either. ``margin`` is a plain attribute, settable at run time.
    ``cos(theta + m)`` is computed as in :class:`AAMSoftmax` (the ArcFace fallback where
    ``theta + m > pi``; ``easy_margin`` applies it only where ``cos > 0``). With ``margin=0`` this is
    exactly SupCon with temperature ``1 / scale``. Returns a scalar.

    Under DDP pass embeddings and labels gathered from all ranks (autograd-aware all-gather).
    """

    def __init__(
        self,
        scale: float = 30.0,
        margin: float = 0.2,
        temperature: float | None = None,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        if temperature is not None:
            if temperature <= 0:
                raise ValueError(f"temperature must be > 0, got {temperature}")
            scale = 1.0 / temperature
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = float(scale)
        self.margin = float(margin)
        self.easy_margin = bool(easy_margin)

    def set_margin(self, margin: float) -> None:
        self.margin = float(margin)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() == 3:
            b, v, d = z.shape
            if labels is None:
                labels = torch.arange(b, device=z.device)
            if labels.shape != (b,):
                raise ValueError(f"labels must be ({b},) for (B, V, D) input, got {tuple(labels.shape)}")
            z = z.reshape(b * v, d)
            labels = labels.repeat_interleave(v)
        elif z.dim() == 2:
            if labels is None or labels.shape != (z.shape[0],):
                raise ValueError(
                    f"labels must be ({z.shape[0]},) for (N, D) input, got "
                    f"{None if labels is None else tuple(labels.shape)}"
                )
        else:
            raise ValueError(f"embeddings must be (N, D) or (B, V, D), got shape {tuple(z.shape)}")
        n = z.shape[0]
        labels = labels.to(z.device)
        with float32_region(z.device):
            zn = F.normalize(z.float(), dim=1)
            cos = zn @ zn.t()
            self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
            pos_mask = (labels[:, None] == labels[None, :]) & ~self_mask
            pos_cos = add_angular_margin(cos, self.margin, self.easy_margin)
            logits = self.scale * torch.where(pos_mask, pos_cos, cos)
            logits = logits.masked_fill(self_mask, float("-inf"))
            log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            n_pos = pos_mask.sum(dim=1)
            has_pos = n_pos > 0
            if not bool(has_pos.any()):
                return zn.sum() * 0.0
            pos_sum = torch.where(pos_mask, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
            per_anchor = -pos_sum[has_pos] / n_pos[has_pos]
            return per_anchor.mean()

    def extra_repr(self) -> str:
        return f"scale={self.scale}, margin={self.margin}, easy_margin={self.easy_margin}"


class AAMPlusSupCon(nn.Module):
    """``AAM on every view + supcon_weight * SupConAAM over the views`` (Li et al. 2022's combination).

    ``forward(z, labels, keep=None, supcon_z=None, supcon_labels=None) -> (loss, parts)``:

    - ``z`` ``(B, V, D)``: ``V`` augmented views (crops) of ``B`` items; ``labels`` ``(B,)`` speakers.
    - AAM part: ``aam`` (an :class:`~spkemb.losses.aam.AAMSoftmax` or a
      :class:`~spkemb.losses.subcenter.SubCenterAAM`) on all ``B * V`` embeddings, each with its
      item's label; the mean over rows.
    - SupCon part: ``supcon`` over the ``B * V`` embeddings, views of same-speaker items positives
      of each other (with the angular margin), every other row a negative.
    - ``keep`` ``(B,)`` bool (a loss gate): items left out of both parts entirely (their rows are
      neither anchors, positives nor negatives of the SupCon part).
    - ``supcon_z`` ``(N, V, D)`` / ``supcon_labels`` ``(N,)``: what the SupCon part runs on instead
      of ``z`` / ``labels``, e.g. the kept items gathered from all DDP ranks (with an autograd-aware
      all-gather); ``keep`` is then not applied to it (filter before gathering).

    ``parts`` is a dict of detached 0-d tensors: ``"aam"``, ``"supcon"`` (the two unweighted
    terms), ``"acc"`` (the AAM's margin-free accuracy over all rows). :meth:`detailed` also returns
    the AAM part's :class:`~spkemb.losses.aam.AAMOutput` (rows ordered item-major: row
    ``b * V + v`` is view ``v`` of item ``b``) and the per-item AAM loss ``(B,)`` averaged over views,
    what a loss gate fits.

    ``margin`` is a property: reading gives the AAM's, setting sets both parts' margins (one
    warm-up for both, as a :class:`~spkemb.losses.aam.MarginScheduler` does with ``apply``).
    """

    def __init__(self, aam: AAMSoftmax, supcon: SupConAAM | None = None, supcon_weight: float = 1.0) -> None:
        super().__init__()
        if supcon_weight < 0:
            raise ValueError(f"supcon_weight must be >= 0, got {supcon_weight}")
        self.aam = aam
        self.supcon = supcon if supcon is not None else SupConAAM(scale=aam.scale, margin=aam.margin)
        self.supcon_weight = float(supcon_weight)

    @property
    def margin(self) -> float:
        return self.aam.margin

    @margin.setter
    def margin(self, value: float) -> None:
        self.aam.margin = float(value)
        self.supcon.margin = float(value)

    def set_margin(self, margin: float) -> None:
        self.margin = margin

    def detailed(
        self,
        z: torch.Tensor,
        labels: torch.Tensor,
        keep: torch.Tensor | None = None,
        supcon_z: torch.Tensor | None = None,
        supcon_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], AAMOutput, torch.Tensor]:
        """``(loss, parts, aam_output, per_item_aam_loss)``; see the class docstring."""
        if z.dim() != 3:
            raise ValueError(f"z must be (B, V, D), got shape {tuple(z.shape)}")
        b, v, d = z.shape
        if labels.shape != (b,):
            raise ValueError(f"labels must be ({b},), got shape {tuple(labels.shape)}")
        labels = labels.long().to(z.device)
        row_keep = None if keep is None else keep.to(z.device).bool().repeat_interleave(v)
        out = self.aam.detailed(z.reshape(b * v, d), labels.repeat_interleave(v), row_keep)
        if supcon_z is None:
            supcon_z, supcon_labels = z, labels
            if keep is not None:
                mask = keep.to(z.device).bool()
                supcon_z, supcon_labels = z[mask], labels[mask]
        elif supcon_labels is None:
            raise ValueError("supcon_labels must come with supcon_z")
        sc = self.supcon(supcon_z, supcon_labels)
        loss = out.loss + self.supcon_weight * sc
        parts = {"aam": out.loss.detach(), "supcon": sc.detach(), "acc": out.acc}
        return loss, parts, out, out.per_sample.view(b, v).mean(dim=1)

    def forward(
        self,
        z: torch.Tensor,
        labels: torch.Tensor,
        keep: torch.Tensor | None = None,
        supcon_z: torch.Tensor | None = None,
        supcon_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, parts, _, _ = self.detailed(z, labels, keep, supcon_z, supcon_labels)
        return loss, parts

    def extra_repr(self) -> str:
        return f"supcon_weight={self.supcon_weight}"
