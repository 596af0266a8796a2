"""SpecAugment-style masking of feature tensors (frequency bands and time spans set to zero)."""

from __future__ import annotations

import torch
from torch import nn


def _band_mask(batch: int, size: int, count: int, width: int, generator: torch.Generator | None) -> torch.Tensor:
    """(batch, size) bool: the union of ``count`` random bands, each 0..``width`` wide."""
    if count <= 0 or width <= 0 or size <= 0:
        return torch.zeros(batch, size, dtype=torch.bool)
    w = torch.randint(0, min(width, size) + 1, (batch, count), generator=generator)
    start = (torch.rand(batch, count, generator=generator) * (size - w + 1)).floor().long()
    idx = torch.arange(size)
    inside = (idx >= start[..., None]) & (idx < (start + w)[..., None])
    return inside.any(dim=1)


class SpecAugment(nn.Module):
    """Zero ``freq_masks`` frequency bands (up to ``freq_width`` bins) and ``time_masks`` time spans
    (up to ``time_width`` frames) per example of a ``(B, T, F)`` batch.

    Active only in training mode; in eval mode it returns its input unchanged. Masks are drawn
    with torch's RNG on the CPU (or from ``generator``), so they are the same on any device.
    Zero is the mean after mean normalisation, so masked features carry no information.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 8,
        time_masks: int = 2,
        time_width: int = 10,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if min(freq_masks, freq_width, time_masks, time_width) < 0:
            raise ValueError("mask counts and widths must be non-negative")
        self.freq_masks, self.freq_width = int(freq_masks), int(freq_width)
        self.time_masks, self.time_width = int(time_masks), int(time_width)
        self.generator = generator

    def extra_repr(self) -> str:
        return (
            f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, "
            f"time_masks={self.time_masks}, time_width={self.time_width}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if x.dim() != 3:
            raise ValueError(f"SpecAugment expects (batch, time, freq) features, got shape {tuple(x.shape)}")
        b, t, f = x.shape
        fmask = _band_mask(b, f, self.freq_masks, self.freq_width, self.generator)
        tmask = _band_mask(b, t, self.time_masks, self.time_width, self.generator)
        mask = (fmask[:, None, :] | tmask[:, :, None]).to(x.device)
        return x.masked_fill(mask, 0.0)
