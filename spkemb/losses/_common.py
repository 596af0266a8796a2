"""Helpers shared by the losses: run the numerically sensitive parts in float32."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def float32_region(device: torch.device) -> Iterator[None]:
    """Turn autocast off for ``device``'s type inside the block, so that matmuls, softmax and
    log-sum-exp run in the dtype of their (float32) inputs rather than in bf16/fp16."""
    device_type = device.type
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except (RuntimeError, TypeError, ValueError):  # a device type autocast does not know
        enabled = False
    if enabled:
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def check_2d(name: str, x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(x.shape)}")
