"""Sub-centre AAM softmax (Deng et al. 2020, sub-center ArcFace) with the optional inter-top-k
penalty (Zhao et al. 2021), the WeSpeaker ``ArcMarginProduct_intertopk_subcenter`` recipe.

Each class has ``K`` weight vectors (sub-centres); a sample's cosine to a class is its largest
cosine to that class's sub-centres, so a class may split into modes (clean majority, noisy or odd
minorities) instead of pulling them all onto one centre. Deng et al. then call, per class, the
sub-centre most samples are nearest to *dominant*, and drop samples whose angle to their class's
dominant sub-centre is over a threshold (75 degrees) as probable label noise:
:func:`dominant_subcenter_keep` computes that mask; :class:`SubCenterAAM` counts the nearest
sub-centres as it trains and applies the mask once ``drop_outliers`` is set (by the method, after
a given step).

The inter-top-k penalty makes the ``k`` hardest negative classes of each sample (largest cosine)
harder still: their logit is ``s * cos(theta_j - m')`` instead of ``s * cos(theta_j)``. As in
WeSpeaker, ``m'`` follows the margin warm-up: it is ``topk_margin * margin / final_margin`` (capped
at ``topk_margin``), where ``final_margin`` is the margin given to the constructor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from spkemb.losses._common import check_2d, float32_region
from spkemb.losses.aam import AAMSoftmax


def dominant_subcenter_keep(
    cos_sub: torch.Tensor, labels: torch.Tensor, dominant: torch.Tensor, max_angle_deg: float = 75.0
) -> torch.Tensor:
    """Bool ``(B,)``: rows whose angle to their class's dominant sub-centre is at most ``max_angle_deg``.

    ``cos_sub`` ``(B, n_classes, K)``: cosines to every sub-centre; ``dominant`` ``(n_classes,)``:
    each class's dominant sub-centre, or ``-1`` where it is not known yet (those rows are kept).
    """
    if cos_sub.dim() != 3:
        raise ValueError(f"cos_sub must be (B, n_classes, K), got shape {tuple(cos_sub.shape)}")
    labels = labels.long().to(cos_sub.device)
    dom = dominant.long().to(cos_sub.device)[labels]
    rows = torch.arange(cos_sub.shape[0], device=cos_sub.device)
    cos_dom = cos_sub[rows, labels, dom.clamp_min(0)]
    return (dom < 0) | (cos_dom >= math.cos(math.radians(max_angle_deg)))


class SubCenterAAM(AAMSoftmax):
    """AAM softmax with ``subcenters`` weight vectors per class and an optional inter-top-k penalty.

    Same call and outputs as :class:`~spkemb.losses.aam.AAMSoftmax` (``forward(x, labels, keep=None)
    -> (loss, acc)``, :meth:`detailed` ``-> AAMOutput``); the class cosine is the max over the
    class's sub-centres. With ``subcenters=1`` and ``topk=0`` it is exactly ``AAMSoftmax``.

    ``topk`` / ``topk_margin``: the inter-top-k penalty (0 turns it off; WeSpeaker uses 5 and 0.06
    with margin 0.2). ``drop_outliers`` (attribute, default False) and ``outlier_angle`` (degrees):
    when set, rows farther than ``outlier_angle`` from their class's dominant sub-centre are left
    out of the loss (and of ``kept``). The dominant sub-centre is the argmax of the persistent
    buffer ``subcenter_counts`` ``(n_classes, K)``, which counts, in training mode, for each sample,
    the sub-centre of its class it is nearest to. Under DDP, set ``reduce_counts`` (e.g.
    ``spkemb.utils.distributed.all_reduce``) so every rank counts every rank's samples and the
    buffer stays identical; it is then called in ``forward`` (a collective, on every rank).
    The weight is ``(n_classes * subcenters, embed_dim)``, rows ``c * K .. c * K + K - 1`` class ``c``.
    """

    subcenter_counts: torch.Tensor

    def __init__(
        self,
        embed_dim: int,
        n_classes: int,
        margin: float = 0.2,
        scale: float = 30.0,
        subcenters: int = 3,
        topk: int = 0,
        topk_margin: float = 0.06,
        outlier_angle: float = 75.0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(embed_dim, n_classes, margin=margin, scale=scale, easy_margin=easy_margin)
        if subcenters < 1 or topk < 0 or topk_margin < 0:
            raise ValueError(
                f"need subcenters >= 1, topk >= 0, topk_margin >= 0; got {subcenters}, {topk}, {topk_margin}"
            )
        self.subcenters = int(subcenters)
        self.topk = int(topk)
        self.topk_margin = float(topk_margin)
        self.final_margin = float(margin)
        self.outlier_angle = float(outlier_angle)
        self.drop_outliers = False
        self.reduce_counts: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.weight = nn.Parameter(torch.empty(self.n_classes * self.subcenters, self.embed_dim))
        nn.init.xavier_normal_(self.weight, gain=1.0)
        self.register_buffer("subcenter_counts", torch.zeros(self.n_classes, self.subcenters, dtype=torch.long))

    def subcenter_cosine(self, x: torch.Tensor) -> torch.Tensor:
        """Cosines ``(B, n_classes, K)`` between ``x`` and every sub-centre, in float32."""
        check_2d("x", x)
        with float32_region(x.device):
            cos = F.normalize(x.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()
            return cos.view(x.shape[0], self.n_classes, self.subcenters)

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """Class cosines ``(B, n_classes)``: the max over each class's sub-centres."""
        return self.subcenter_cosine(x).amax(dim=2)

    def dominant(self) -> torch.Tensor:
        """Each class's dominant sub-centre ``(n_classes,)``; ``-1`` for a class not counted yet."""
        counts = self.subcenter_counts
        return torch.where(counts.sum(dim=1) > 0, counts.argmax(dim=1), torch.full_like(counts[:, 0], -1))

    def effective_topk_margin(self) -> float:
        """``m'`` now: ``topk_margin`` scaled by how far the margin warm-up has come."""
        if self.final_margin <= 0:
            return self.topk_margin if self.margin > 0 else 0.0
        return self.topk_margin * min(1.0, max(0.0, self.margin / self.final_margin))

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = super().margin_logits(cos, labels)
        k = min(self.topk, self.n_classes - 1)
        mp = self.effective_topk_margin()
        if k <= 0 or mp == 0:
            return logits
        target = F.one_hot(labels, self.n_classes).bool()
        top = cos.detach().masked_fill(target, -3.0).topk(k, dim=1).indices
        hard = torch.zeros_like(target).scatter(1, top, True)
        sin = (1.0 - cos * cos).clamp_min(1e-7).sqrt()
        harder = cos * math.cos(mp) + sin * math.sin(mp)  # cos(theta - m')
        return torch.where(hard, self.scale * harder, logits)

    def _cos_and_keep(
        self, x: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cos_sub = self.subcenter_cosine(x)
        if self.training and torch.is_grad_enabled():
            self._count(cos_sub.detach(), labels)
        if self.drop_outliers:
            inlier = dominant_subcenter_keep(cos_sub.detach(), labels, self.dominant(), self.outlier_angle)
            keep = inlier if keep is None else keep.to(inlier.device).bool() & inlier
        return cos_sub.amax(dim=2), keep

    @torch.no_grad()
    def _count(self, cos_sub: torch.Tensor, labels: torch.Tensor) -> None:
        rows = torch.arange(cos_sub.shape[0], device=cos_sub.device)
        nearest = cos_sub[rows, labels].argmax(dim=1)
        hits = torch.zeros_like(self.subcenter_counts).view(-1)
        hits.index_add_(0, labels * self.subcenters + nearest, torch.ones_like(nearest))
        hits = hits.view_as(self.subcenter_counts)
        if self.reduce_counts is not None:
            hits = self.reduce_counts(hits)
        self.subcenter_counts += hits

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", subcenters={self.subcenters}, topk={self.topk}, topk_margin={self.topk_margin}, "
            f"outlier_angle={self.outlier_angle}"
        )
