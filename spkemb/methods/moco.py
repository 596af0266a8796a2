"""MoCo for speakers (He et al. 2020; Ding et al. 2020, "MoCo ... for speaker verification").

Two augmented crops of one utterance: the first goes through the query encoder (+ projection),
the second through the key encoder, an exponential moving average of the query encoder that no
gradient reaches. InfoNCE scores each query against its key and a queue of keys of past batches.

The queue
---------
``queue`` (``queue_size`` x ``proj_dim``) starts as random unit vectors (MoCo's initialisation:
easy negatives until real keys replace them); ``queue_index`` holds the manifest row each real
key came from (-1 for the random start) and ``queue_fill`` how many real keys it holds (logged as
``queue_fill``, a fraction). Keys are enqueued after the loss is computed, so a batch's own keys
are never its negatives in that step; they are gathered from all ranks first so every rank holds
the same queue. An utterance can come back while an older key of it is still queued (small data,
a large queue, several epochs): before each step every queued key whose ``queue_index`` is in the
current batch is left out of the negatives, so an utterance is never its own negative.

BatchNorm shortcut and what is done about it
--------------------------------------------
With BatchNorm, a query and its key are normalised with statistics of the batch they sit in. If
the query of utterance ``i`` and its key are normalised by statistics of *the same set* of
utterances, the network can match them through that shared signature instead of through the
speaker (the "cheating" that MoCo's shuffle-BN prevents). Here both encoders run on ``k`` sub-batches
(``bn_splits``; BatchNorm statistics are per sub-batch): the query encoder on contiguous groups of
the batch, the key encoder on groups of a random permutation of it, then the keys are put back in
order. The key of ``i`` is therefore normalised by a different set of utterances than its query,
which is what shuffling across GPUs achieves in the original. The same local split-and-shuffle
runs on every rank under DDP (BatchNorm is per rank there, unless converted to SyncBN, which would
undo it), so no waveforms need to cross ranks. ``k`` is limited so that every sub-batch has at
least ``bn_min_group`` rows (BatchNorm over 2 or 3 embeddings is mostly noise); with a batch below
``2 * bn_min_group`` it is 1 and both encoders see the whole batch. For encoders without
BatchNorm set ``bn_splits=1``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spkemb.data.crops import ViewSpec
from spkemb.losses import InfoNCE
from spkemb.methods.base import Method, ema_update, freeze
from spkemb.methods.common import batch_views, device_of, embed_dim_of, projection_head
from spkemb.methods.registry import register_method
from spkemb.options import Options, opt
from spkemb.utils.distributed import concat_all_gather

__all__ = ["MoCo", "MoCoOptions", "split_forward"]


@dataclass
class MoCoOptions(Options):
    """MoCo's options (Ding et al. 2020 use a queue of 65,536 and momentum 0.999)."""

    queue_size: int = opt(1024, "negatives kept from past batches (65,536 at scale)")
    momentum: float = opt(0.999, "key encoder EMA momentum")
    temperature: float = opt(0.07, "InfoNCE temperature")
    proj_dim: int | None = opt(128, "projection size (none/0: no projection)")
    proj_hidden: int = opt(512, "hidden size of the projection MLP")
    mlp: bool = opt(True, "two-layer projection (false: one linear layer)")
    symmetric: bool = opt(False, "also score the second crop's query against the first crop's key")
    bn_splits: int = opt(4, "sub-batches for shuffled BatchNorm (1: off, for encoders without BatchNorm)")
    bn_min_group: int = opt(8, "fewest rows per BatchNorm sub-batch")
    crop_seconds: float = opt(2.0, "length of the two crops")

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


def split_forward(net: nn.Module, x: Tensor, groups: int, perm: Tensor | None = None) -> Tensor:
    """``net`` run on ``groups`` sub-batches of ``x`` (of ``x[perm]`` when ``perm`` is given, with
    the output put back in the original order)."""
    if perm is not None:
        x = x[perm]
    if groups <= 1:
        y = net(x)
    else:
        y = torch.cat([net(part) for part in torch.tensor_split(x, groups)])
    if perm is not None:
        out = torch.empty_like(y)
        out[perm] = y
        y = out
    return y


@register_method("moco")
class MoCo(Method):
    """MoCo v2-style speaker pretraining; see the module docstring (options: :class:`MoCoOptions`)."""

    Options = MoCoOptions
    queue: Tensor
    queue_index: Tensor
    queue_ptr: Tensor
    queue_fill: Tensor

    def __init__(self, encoder: nn.Module, options: MoCoOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = self.resolve(options, kwargs)
        self.encoder = encoder
        self.head = projection_head(embed_dim_of(encoder), o.proj_dim, o.proj_hidden, o.mlp)
        self.key_encoder = freeze(copy.deepcopy(encoder))
        self.key_head = freeze(copy.deepcopy(self.head))
        self.loss_fn = InfoNCE(o.temperature)
        self.momentum = float(o.momentum)
        self.symmetric = bool(o.symmetric)
        self.bn_splits = max(1, int(o.bn_splits))
        self.bn_min_group = max(2, int(o.bn_min_group))
        self.crops_per_item = 2
        dim = int(o.proj_dim) if o.proj_dim else embed_dim_of(encoder)
        self.register_buffer("queue", F.normalize(torch.randn(int(o.queue_size), dim), dim=1))
        self.register_buffer("queue_index", torch.full((int(o.queue_size),), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_fill", torch.zeros((), dtype=torch.long))

    @staticmethod
    def views(o: MoCoOptions) -> ViewSpec:
        return [(2, float(o.crop_seconds))]

    def groups_for(self, batch_size: int) -> int:
        """Sub-batches used for BatchNorm at this batch size."""
        return max(1, min(self.bn_splits, batch_size // self.bn_min_group))

    def _query(self, x: Tensor, groups: int) -> Tensor:
        return self.head(split_forward(self.encoder, x, groups))

    @torch.no_grad()
    def _key(self, x: Tensor, groups: int) -> Tensor:
        perm = torch.randperm(x.shape[0], device=x.device) if groups > 1 else None
        return self.key_head(split_forward(self.key_encoder, x, groups, perm)).float()

    def negatives(self, index: Tensor | None) -> Tensor:
        """The queue without the keys of utterances in ``index`` (the current batch)."""
        if index is None:
            return self.queue
        own = torch.isin(self.queue_index, index)
        if bool(own.any()):
            return self.queue[~own]
        return self.queue

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        views, index = batch_views(batch, device_of(self))
        v = views[0]
        if v.dim() != 3 or v.shape[1] < 2:
            raise ValueError(f"MoCo needs views (B, 2, S), got {tuple(v.shape)}")
        x1, x2 = v[:, 0], v[:, 1]
        groups = self.groups_for(v.shape[0])
        q1 = self._query(x1, groups)
        k2 = self._key(x2, groups)
        neg = self.negatives(index).detach()
        loss = self.loss_fn(q1, k2, neg)
        if self.symmetric:
            q2 = self._query(x2, groups)
            k1 = self._key(x1, groups)
            loss = 0.5 * (loss + self.loss_fn(q2, k1, neg))
        with torch.no_grad():
            pos = F.cosine_similarity(q1.float(), k2, dim=1).mean()
        if self.training:
            self.enqueue(k2, index)
        logs = {
            "loss": float(loss.detach().item()),
            "pos_sim": float(pos.item()),
            "queue_fill": float(self.queue_fill.item()) / self.queue.shape[0],
        }
        return loss, logs

    @torch.no_grad()
    def enqueue(self, keys: Tensor, index: Tensor | None) -> None:
        """Write ``keys`` (gathered from all ranks) at the queue pointer, wrapping around."""
        keys = F.normalize(concat_all_gather(keys.detach().float()), dim=1)
        if index is None:
            index = torch.full((keys.shape[0],), -1, dtype=torch.long, device=keys.device)
        else:
            index = concat_all_gather(index.long())
        size = self.queue.shape[0]
        n = keys.shape[0]
        if n >= size:  # more keys than room: keep the newest
            keys, index, n = keys[-size:], index[-size:], size
        pos = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        self.queue[pos] = keys.to(self.queue.dtype)
        self.queue_index[pos] = index
        self.queue_ptr.copy_((self.queue_ptr + n) % size)
        self.queue_fill.copy_(torch.clamp(self.queue_fill + n, max=size))

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int | None) -> None:
        """Key encoder and head <- ``momentum * key + (1 - momentum) * query``."""
        ema_update(self.key_encoder, self.encoder, self.momentum)
        ema_update(self.key_head, self.head, self.momentum)
