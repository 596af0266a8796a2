"""Contrastive equilibrium learning (Mun et al. 2020): ``M`` crops of every utterance; a
uniformity loss spreads all crop embeddings over the sphere while an angular prototypical loss
pulls each utterance's crops together (the loss is :class:`~spkemb.losses.CELoss`)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from spkemb.data.crops import ViewSpec
from spkemb.losses import CELoss
from spkemb.methods.base import Method
from spkemb.methods.simclr import batch_views, device_of, flatten_views, gather_with_grad, projection_head

__all__ = ["CEL"]


class CEL(Method):
    """Encoder (+ optional projection) trained with ``lambda_u * uniformity + lambda_s * angular
    prototypical`` over ``n_crops`` crops per utterance.

    Options (defaults): ``n_crops`` 2 (M; the paper also uses more), ``crop_seconds`` 2.0,
    ``lambda_u`` 1.0, ``lambda_s`` 1.0, ``t`` 2.0 (uniformity), ``init_scale`` 10.0 and
    ``init_bias`` -5.0 (the learnable scale/bias of the angular prototypical loss, trained with
    everything else), ``proj_dim`` None (no projection: the loss sees the embeddings, as in the
    paper), ``proj_hidden`` 512, ``mlp`` True.

    All crops of the batch go through the encoder as one batch. Under DDP the crop embeddings are
    gathered from all ranks (autograd-aware), so both terms see the global batch.
    """

    def __init__(
        self,
        encoder: nn.Module,
        n_crops: int = 2,
        crop_seconds: float = 2.0,
        lambda_u: float = 1.0,
        lambda_s: float = 1.0,
        t: float = 2.0,
        init_scale: float = 10.0,
        init_bias: float = -5.0,
        proj_dim: int | None = None,
        proj_hidden: int = 512,
        mlp: bool = True,
    ) -> None:
        super().__init__()
        if int(n_crops) < 2:
            raise ValueError(f"CEL needs n_crops >= 2, got {n_crops}")
        self.encoder = encoder
        self.head = projection_head(int(encoder.embed_dim), proj_dim, proj_hidden, mlp)
        self.loss_fn = CELoss(lambda_u, lambda_s, t, init_scale=init_scale, init_bias=init_bias)
        self.n_crops = int(n_crops)
        self.crops_per_item = self.n_crops
        self.config = {
            "name": "cel", "n_crops": self.n_crops, "crop_seconds": float(crop_seconds),
            "lambda_u": float(lambda_u), "lambda_s": float(lambda_s), "t": float(t),
            "init_scale": float(init_scale), "init_bias": float(init_bias), "proj_dim": proj_dim,
            "proj_hidden": int(proj_hidden), "mlp": bool(mlp),
        }  # fmt: skip

    @staticmethod
    def views(n_crops: int = 2, crop_seconds: float = 2.0) -> ViewSpec:
        return [(int(n_crops), float(crop_seconds))]

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
