"""Contrastive losses with explicit negatives: InfoNCE (MoCo) and NT-Xent (SimCLR).

Both modules are single-process. Under DDP the caller gathers what must be shared across ranks
(the queue of keys for MoCo; the views for SimCLR, with an autograd-aware all-gather such as
``torch.distributed.nn.functional.all_gather``) and passes the gathered tensors in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spkemb.losses._common import check_2d, float32_region


class InfoNCE(nn.Module):
    """InfoNCE as used by MoCo (He et al. 2020; for speakers, Ding et al. 2020).

    ``forward(query, key, queue=None)`` with ``query`` and ``key`` of shape ``(B, D)`` (row ``i`` of
    ``key`` is the positive of row ``i`` of ``query``) and ``queue`` of shape ``(K, D)`` (negatives,
    e.g. keys of past batches). All inputs are L2-normalised here. For each query the logits are
    ``[q·k, q·n_1, ..., q·n_K] / temperature`` and the loss is the cross-entropy with target 0,
    averaged over the batch. Returns a scalar.

    With ``queue=None`` the other keys of the batch are the negatives instead (logits ``q @ key.T /
    temperature``, target the diagonal), as in MoCo v3. Under DDP pass the keys (and, for the
    in-batch form, the queries) gathered from all ranks; the key and queue should carry no gradient
    (the key encoder is a momentum copy), which is the caller's business (``.detach()``).
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor | None = None) -> torch.Tensor:
        check_2d("query", query)
        check_2d("key", key)
        if key.shape != query.shape:
            raise ValueError(f"query and key must have the same shape, got {tuple(query.shape)} and {tuple(key.shape)}")
        with float32_region(query.device):
            q = F.normalize(query.float(), dim=1)
            k = F.normalize(key.float(), dim=1)
            if queue is None:
                logits = q @ k.t() / self.temperature
                target = torch.arange(q.shape[0], device=q.device)
            else:
                check_2d("queue", queue)
                n = F.normalize(queue.float(), dim=1)
                pos = (q * k).sum(dim=1, keepdim=True)
                neg = q @ n.t()
                logits = torch.cat([pos, neg], dim=1) / self.temperature
                target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
            return F.cross_entropy(logits, target)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class NTXent(nn.Module):
    """NT-Xent, SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020).

    ``forward(z1, z2)`` with two views ``(B, D)`` of the same ``B`` examples (row ``i`` of ``z1`` and
    row ``i`` of ``z2`` come from one example). The ``2B`` embeddings are L2-normalised and stacked;
    for each of them the positive is the other view of the same example, the negatives are the
    remaining ``2B - 2`` embeddings, and its own similarity is masked out. The loss is the
    cross-entropy of ``cos / temperature`` over those ``2B - 1`` candidates, averaged over all ``2B``
    anchors (so it is symmetric in the two views). Returns a scalar.

    Under DDP pass views gathered from all ranks with an autograd-aware all-gather (every rank then
    computes the same loss over the global batch, and DDP's gradient averaging gives the right
    gradient).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        check_2d("z1", z1)
        check_2d("z2", z2)
        if z1.shape != z2.shape:
            raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
        b = z1.shape[0]
        if b < 1:
            raise ValueError("NT-Xent needs at least one example")
        with float32_region(z1.device):
            z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)
            logits = z @ z.t() / self.temperature
            self_mask = torch.eye(2 * b, dtype=torch.bool, device=z.device)
            logits = logits.masked_fill(self_mask, float("-inf"))
            idx = torch.arange(b, device=z.device)
            target = torch.cat([idx + b, idx])
            return F.cross_entropy(logits, target)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
