"""Contrastive equilibrium learning (Mun et al. 2020): ``M`` crops of every utterance; a
uniformity loss spreads all crop embeddings over the sphere while an angular prototypical loss
pulls each utterance's crops together (the loss is :class:`~spkemb.losses.CELoss`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from spkemb.data.crops import ViewSpec
from spkemb.losses import CELoss
from spkemb.methods.base import Method
from spkemb.methods.common import batch_views, device_of, embed_dim_of, flatten_views, projection_head
from spkemb.methods.registry import register_method
from spkemb.options import Options, opt
from spkemb.utils.distributed import gather_with_grad

__all__ = ["CEL", "CELOptions"]


@dataclass
class CELOptions(Options):
    """CEL's options (Mun et al. 2020)."""

    n_crops: int = opt(2, "M, crops per utterance (at least 2)")
    crop_seconds: float = opt(2.0, "length of each crop")
    lambda_u: float = opt(1.0, "weight of the uniformity loss")
    lambda_s: float = opt(1.0, "weight of the angular prototypical loss")
    t: float = opt(2.0, "uniformity temperature")
    init_scale: float = opt(10.0, "initial learnable scale of the angular prototypical loss")
    init_bias: float = opt(-5.0, "initial learnable bias of the angular prototypical loss")
    proj_dim: int | None = opt(None, "projection size (none: the loss sees the embeddings, as in the paper)")
    proj_hidden: int = opt(512, "hidden size of the projection MLP")
    mlp: bool = opt(True, "two-layer projection (false: one linear layer)")

    def __post_init__(self) -> None:
        if self.n_crops < 2:
            raise ValueError(f"CEL needs n_crops >= 2, got {self.n_crops}")
        if self.crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be positive, got {self.crop_seconds}")


@register_method("cel")
class CEL(Method):
    """Encoder (+ optional projection) trained with ``lambda_u * uniformity + lambda_s * angular
    prototypical`` over ``n_crops`` crops per utterance (options: :class:`CELOptions`).

    All crops of the batch go through the encoder as one batch. Under DDP the crop embeddings are
    gathered from all ranks (autograd-aware), so both terms see the global batch.
    """

    Options = CELOptions

    def __init__(self, encoder: nn.Module, options: CELOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = self.resolve(options, kwargs)
        self.encoder = encoder
        self.head = projection_head(embed_dim_of(encoder), o.proj_dim, o.proj_hidden, o.mlp)
        self.loss_fn = CELoss(o.lambda_u, o.lambda_s, o.t, init_scale=o.init_scale, init_bias=o.init_bias)
        self.n_crops = o.n_crops
        self.crops_per_item = self.n_crops

    @staticmethod
    def views(o: CELOptions) -> ViewSpec:
        return [(int(o.n_crops), float(o.crop_seconds))]

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        views, _ = batch_views(batch, device_of(self))
        v = views[0]
        if v.dim() != 3 or v.shape[1] < 2:
            raise ValueError(f"CEL needs views (B, M >= 2, S), got {tuple(v.shape)}")
        b, m = v.shape[0], v.shape[1]
        z = self.head(self.encoder(flatten_views(v)))  # (m * b, D), crop-major
        z = z.reshape(m, b, -1).transpose(0, 1)  # (b, m, D)
        z = gather_with_grad(z.contiguous())
        loss, parts = self.loss_fn(z)
        logs = {"loss": float(loss.detach().item())}
        logs.update({k: float(p.item()) for k, p in parts.items()})
        logs["ap_scale"] = float(self.loss_fn.angproto.w.detach().item())
        return loss, logs
