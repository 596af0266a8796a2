"""Pieces the methods share: the projection head and the handling of crop batches."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["projection_head", "batch_views", "flatten_views", "device_of", "embed_dim_of"]


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


def embed_dim_of(encoder: nn.Module) -> int:
    """The encoder's embedding size (its ``embed_dim`` attribute, which every encoder has)."""
    return int(getattr(encoder, "embed_dim"))  # noqa: B009 - typed as Any, not as a submodule


def device_of(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (or buffer); CPU for an empty module."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
