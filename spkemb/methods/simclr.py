"""SimCLR for speakers: two augmented crops of an utterance are positives, the rest of the batch
negatives (NT-Xent; Chen et al. 2020, applied to speaker embeddings by e.g. Zhang et al. 2021).

Also holds the pieces the other methods share: :func:`projection_head`, :func:`flatten_views`
and :func:`gather_with_grad`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from spkemb.data.crops import ViewSpec
from spkemb.losses import NTXent
from spkemb.methods.base import Method

__all__ = ["SimCLR", "projection_head", "flatten_views", "gather_with_grad", "batch_views"]


def projection_head(in_dim: int, out_dim: int | None, hidden: int = 512, mlp: bool = True) -> nn.Module:
    """The projection on top of the encoder: ``Linear -> ReLU -> Linear`` (``mlp``), one
    ``Linear``, or the identity when ``out_dim`` is ``None``/0. No BatchNorm, so it adds no
    batch-statistics coupling of its own."""
    if not out_dim:
        return nn.Identity()
    if not mlp:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


def batch_views(batch: Any, device: torch.device) -> tuple[list[Tensor], Tensor | None]:
    """``(views, index)`` of a :func:`~spkemb.data.crops.collate_crops` batch, on ``device``."""
    views = [v.to(device, non_blocking=True) for v in batch["views"]]
    index = batch.get("index")
    if index is not None:
        index = index.to(device, non_blocking=True)
    return views, index


def flatten_views(v: Tensor) -> Tensor:
    """``(B, n, S)`` crops -> ``(n * B, S)``, crop-major (rows ``k*B .. k*B+B-1`` are crop ``k``)."""
    return v.transpose(0, 1).reshape(-1, v.shape[-1])


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` from every rank (rank order) so that gradients flow back to each rank's
    own rows (``torch.distributed.nn.functional.all_gather``). Uneven row counts are padded and
    trimmed. Alone, returns ``t``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    if t.shape[0] < longest:
        t = torch.cat([t, t.new_zeros((longest - t.shape[0], *t.shape[1:]))])
    parts = all_gather(t.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


def device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


class SimCLR(Method):
    """Encoder + projection MLP, NT-Xent over the two views of every utterance in the batch.

    Options (defaults): ``temperature`` 0.1; ``proj_dim`` 128 (``None``/0: no projection, the loss
    sees the embeddings), ``proj_hidden`` 512, ``mlp`` True (False: one linear layer);
    ``crop_seconds`` 2.0 (the two crops' length, see :meth:`views`).

    Both views go through the encoder as one batch of ``2B`` (BatchNorm statistics are shared by
    positives and negatives alike, so they carry no shortcut). Under DDP the projections are
    gathered from all ranks with an autograd-aware all-gather, so the negatives span the global
    batch. Rows of one batch are assumed to be distinct utterances (the sampler draws without
    replacement); NT-Xent has no mask for a repeated utterance.
    """

    def __init__(
        self,
        encoder: nn.Module,
        temperature: float = 0.1,
        proj_dim: int | None = 128,
        proj_hidden: int = 512,
        mlp: bool = True,
        crop_seconds: float = 2.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = projection_head(int(encoder.embed_dim), proj_dim, proj_hidden, mlp)
        self.loss_fn = NTXent(temperature)
        self.crops_per_item = 2
        self.config = {
            "name": "simclr", "temperature": float(temperature), "proj_dim": proj_dim,
            "proj_hidden": int(proj_hidden), "mlp": bool(mlp), "crop_seconds": float(crop_seconds),
        }  # fmt: skip

    @staticmethod
    def views(crop_seconds: float = 2.0) -> ViewSpec:
        return [(2, float(crop_seconds))]

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
