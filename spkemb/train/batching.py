"""Batches on their way to the method: dropping unreadable items, moving tensors to the device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.utils.data import default_collate

__all__ = ["CollatedBatch", "SkipNoneCollate", "skip_none_collate", "to_device"]


class CollatedBatch(NamedTuple):
    """What the loader yields: the collated batch (``None`` if every item was dropped), the number
    of items in it and the number of ``None`` items dropped."""

    data: Any
    n_items: int
    n_skipped: int


class SkipNoneCollate:
    """Collate wrapper that drops ``None`` items (unreadable audio) and counts them. Picklable."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        self.collate_fn = collate_fn if collate_fn is not None else default_collate

    def __call__(self, items: list[Any]) -> CollatedBatch:
        kept = [x for x in items if x is not None]
        data = self.collate_fn(kept) if kept else None
        return CollatedBatch(data, len(kept), len(items) - len(kept))


def skip_none_collate(collate_fn: Callable[[list[Any]], Any] | None = None) -> SkipNoneCollate:
    """Wrap ``collate_fn`` (default: torch's ``default_collate``) so that ``None`` items are dropped."""
    return SkipNoneCollate(collate_fn)


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor inside dicts, lists, tuples and named tuples to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj
