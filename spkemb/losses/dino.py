"""DINO self-distillation (Caron et al. 2021; for speakers, e.g. Chen et al. 2023): loss and head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from spkemb.losses._common import float32_region


def _split_views(out: torch.Tensor | Sequence[torch.Tensor], n_views: int | None, name: str) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        if out.dim() != 2:
            raise ValueError(
                f"{name} must be 2-D (views*batch, K) or a list of (batch, K), got shape {tuple(out.shape)}"
            )
        if n_views is None or n_views < 1 or out.shape[0] % n_views:
            raise ValueError(f"{name}: {out.shape[0]} rows do not split into {n_views} views")
        return list(out.chunk(n_views, dim=0))
    views = list(out)
    if not views or any(v.dim() != 2 for v in views):
        raise ValueError(f"{name} must be a non-empty list of 2-D (batch, K) tensors")
    return views


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher distribution and the student's.

    ``forward(student_out, teacher_out)``:

    - ``student_out``: the student head's logits for all crops, either a list of ``(B, K)`` tensors
      (one per crop) or one ``(n_crops * B, K)`` tensor with the crops stacked crop-major. The first
      ``n_global`` crops must be the global crops, in the same order as the teacher's.
    - ``teacher_out``: the teacher head's logits for the ``n_global`` global crops, a list of
      ``(B, K)`` tensors or one ``(n_global * B, K)`` tensor. It is treated as a constant (detached).

    Teacher probabilities are ``softmax((teacher - center) / teacher_temp)``; student
    log-probabilities are ``log_softmax(student / student_temp)``. For every (teacher view ``t``,
    student view ``s``) pair with ``s != t`` the per-example cross-entropy
    ``-sum_k p_t log q_s`` is averaged over the batch, and the pair losses are averaged. Returns a
    scalar. ``teacher_temp`` and ``student_temp`` are plain attributes, settable at run time (for the
    teacher-temperature warm-up).

    ``forward`` does **not** move the centre: after each training step call
    ``update_center(teacher_out)``, which sets ``center = m * center + (1 - m) * batch_mean`` (the
    batch mean of the teacher logits over all global crops; all-reduced across ranks when
    ``torch.distributed`` is initialised). ``center`` is a registered buffer of shape ``(1, K)``, so it
    is saved in the state dict and moves with ``.to(device)``.
    """

    center: torch.Tensor

    def __init__(
        self,
        out_dim: int,
        n_global: int = 2,
        teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if n_global < 1:
            raise ValueError(f"n_global must be >= 1, got {n_global}")
        self.out_dim = int(out_dim)
        self.n_global = int(n_global)
        self.teacher_temp = float(teacher_temp)
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, self.out_dim))

    def forward(
        self,
        student_out: torch.Tensor | Sequence[torch.Tensor],
        teacher_out: torch.Tensor | Sequence[torch.Tensor],
    ) -> torch.Tensor:
        teacher = _split_views(teacher_out, self.n_global, "teacher_out")
        if len(teacher) != self.n_global:
            raise ValueError(f"teacher_out has {len(teacher)} views, expected n_global={self.n_global}")
        batch = teacher[0].shape[0]
        if isinstance(student_out, torch.Tensor):
            n_crops = student_out.shape[0] // batch if batch else 0
            student = _split_views(student_out, n_crops, "student_out")
        else:
            student = _split_views(student_out, None, "student_out")
        if len(student) < self.n_global:
            raise ValueError(f"student_out has {len(student)} crops, fewer than n_global={self.n_global}")
        if len(student) == 1:
            raise ValueError("DINO needs at least 2 crops (one teacher/student pair of different views)")
        for v in (*teacher, *student):
            if v.shape != (batch, self.out_dim):
                raise ValueError(f"every view must be ({batch}, {self.out_dim}), got {tuple(v.shape)}")

        with float32_region(teacher[0].device):
            center = self.center.float()
            t_probs = [F.softmax((t.detach().float() - center) / self.teacher_temp, dim=-1) for t in teacher]
            s_logp = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student]
            total = teacher[0].new_zeros((), dtype=torch.float32)
            n_pairs = 0
            for ti, p in enumerate(t_probs):
                for si, logq in enumerate(s_logp):
                    if si == ti:
                        continue
                    total = total + (-(p * logq).sum(dim=-1)).mean()
                    n_pairs += 1
            return total / n_pairs

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """EMA update of ``center`` from the teacher logits of this step (see the class docstring)."""
        if isinstance(teacher_out, torch.Tensor):
            t = teacher_out.detach().float()
        else:
            t = torch.cat([v.detach().float() for v in teacher_out], dim=0)
        total = t.sum(dim=0, keepdim=True)
        count = t.shape[0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            count *= dist.get_world_size()
        batch_center = total / count
        self.center.mul_(self.center_momentum).add_(
            batch_center.to(self.center.dtype), alpha=1.0 - self.center_momentum
        )

    def extra_repr(self) -> str:
        return (
            f"out_dim={self.out_dim}, n_global={self.n_global}, teacher_temp={self.teacher_temp}, "
            f"student_temp={self.student_temp}, center_momentum={self.center_momentum}"
        )


class DINOHead(nn.Module):
    """DINO projection head: MLP -> L2-normalise -> weight-normalised linear layer to ``out_dim``.

    ``forward(x)`` maps ``(B, in_dim)`` to logits ``(B, out_dim)``. The MLP has ``n_layers`` linear
    layers (``in_dim -> hidden -> ... -> bottleneck``, GELU between them, optional batch norm); with
    ``n_layers=1`` it is one linear layer ``in_dim -> bottleneck``. The last layer is
    ``weight_norm(Linear(bottleneck, out_dim, bias=False))`` (the parametrisation API; the magnitude
    is ``last_layer.parametrizations.weight.original0``), its magnitude initialised to 1 and frozen
    when ``norm_last_layer`` is true. MLP weights are initialised N(0, 0.02) truncated, biases 0.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden: int = 2048,
        bottleneck: int = 256,
        n_layers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        n_layers = max(int(n_layers), 1)
        layers: list[nn.Module]
        if n_layers == 1:
            layers = [nn.Linear(in_dim, bottleneck)]
        else:
            layers = [nn.Linear(in_dim, hidden)]
            for _ in range(n_layers - 2):
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden))
                layers += [nn.GELU(), nn.Linear(hidden, hidden)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden))
            layers += [nn.GELU(), nn.Linear(hidden, bottleneck)]
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        if norm_last_layer:
            g.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1)
        return self.last_layer(x)
