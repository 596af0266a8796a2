"""SimCLR for speakers: two augmented crops of an utterance are positives, the rest of the batch
negatives (NT-Xent; Chen et al. 2020, applied to speaker embeddings by e.g. Zhang et al. 2021).

"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spkemb.data.crops import ViewSpec
from spkemb.losses import NTXent
from spkemb.methods.base import Method
from spkemb.methods.common import batch_views, device_of, embed_dim_of, flatten_views, projection_head
from spkemb.methods.registry import register_method
from spkemb.options import Options, opt
from spkemb.utils.distributed import gather_with_grad

__all__ = ["SimCLR", "SimCLROptions"]


@dataclass
class SimCLROptions(Options):
    """SimCLR's options."""

    temperature: float = opt(0.1, "NT-Xent temperature")
    proj_dim: int | None = opt(128, "projection size (none/0: the loss sees the embeddings)")
    proj_hidden: int = opt(512, "hidden size of the projection MLP")
    mlp: bool = opt(True, "two-layer projection (false: one linear layer)")
    crop_seconds: float = opt(2.0, "length of the two crops")

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be positive, got {self.crop_seconds}")


@register_method("simclr")
class SimCLR(Method):
    """Encoder + projection MLP, NT-Xent over the two views of every utterance in the batch
    (options: :class:`SimCLROptions`).

    Both views go through the encoder as one batch of ``2B`` (BatchNorm statistics are shared by
    positives and negatives alike, so they carry no shortcut). Under DDP the projections are
    gathered from all ranks with an autograd-aware all-gather, so the negatives span the global
    batch. Rows of one batch are assumed to be distinct utterances (the sampler draws without
    replacement); NT-Xent has no mask for a repeated utterance.
    """

    Options = SimCLROptions

    def __init__(self, encoder: nn.Module, options: SimCLROptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = self.resolve(options, kwargs)
        self.encoder = encoder
        self.head = projection_head(embed_dim_of(encoder), o.proj_dim, o.proj_hidden, o.mlp)
        self.loss_fn = NTXent(o.temperature)
        self.crops_per_item = 2

    @staticmethod
    def views(o: SimCLROptions) -> ViewSpec:
        return [(2, float(o.crop_seconds))]

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        views, _ = batch_views(batch, device_of(self))
        v = views[0]
        if v.dim() != 3 or v.shape[1] < 2:
            raise ValueError(f"SimCLR needs views (B, 2, S), got {tuple(v.shape)}")
        b = v.shape[0]
        z = self.head(self.encoder(flatten_views(v[:, :2])))
        z1, z2 = gather_with_grad(z[:b]), gather_with_grad(z[b:])
        loss = self.loss_fn(z1, z2)
        with torch.no_grad():
            pos = F.cosine_similarity(z1.float(), z2.float(), dim=1).mean()
        return loss, {"loss": float(loss.detach().item()), "pos_sim": float(pos.item())}
