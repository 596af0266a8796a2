"""Masked statistics pooling and frame-length helpers shared by the encoders."""

from __future__ import annotations

import torch
from torch import Tensor

from spkemb.features import frame_mask

__all__ = ["time_mask", "masked_mean_std", "downsample_lengths"]


def time_mask(frame_lengths: Tensor | None, num_frames: int, dtype: torch.dtype) -> Tensor | None:
    """(B, 1, T) mask (1 on valid frames) or ``None`` when there is no padding to mask."""
    if frame_lengths is None:
        return None
    frame_lengths = frame_lengths.clamp(max=num_frames)
    if bool((frame_lengths >= num_frames).all()):
        return None
    return frame_mask(frame_lengths, num_frames).unsqueeze(1).to(dtype)


def downsample_lengths(frame_lengths: Tensor | None, stride: int) -> Tensor | None:
    """Frames left after a stride-``stride`` layer with 'same' padding: ceil(L / stride)."""
    if frame_lengths is None or stride == 1:
        return frame_lengths
    return torch.div(frame_lengths + stride - 1, stride, rounding_mode="floor")


def masked_mean_std(x: Tensor, mask: Tensor | None, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of (B, D, T) ``x`` over time, on the frames where ``mask`` is 1.

    Computed in float32 whatever the input dtype.
    """
    x = x.float()
    if mask is None:
        # (torch.var_mean is several times slower than this on the CPU.)
        mean = x.mean(dim=2)
        var = torch.linalg.vecdot(x, x, dim=2) / x.shape[2] - mean.square()
        return mean, var.clamp(min=eps).sqrt()
    mask = mask.float()
    n = mask.sum(dim=2).clamp(min=1.0)  # (B, 1)
    mean = (x * mask).sum(dim=2) / n
    var = ((x - mean.unsqueeze(2)).square() * mask).sum(dim=2) / n
    return mean, var.clamp(min=eps).sqrt()
