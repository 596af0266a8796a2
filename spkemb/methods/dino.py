"""DINO for speakers (Caron et al. 2021; for speaker verification e.g. Han et al. 2022, Chen et
al. 2023): self-distillation without labels.

The student (encoder + :class:`~spkemb.losses.DINOHead`) sees every crop, two long "global" ones
and several short "local" ones; the teacher, an exponential moving average of the student that
no gradient reaches, sees only the global crops. The student learns to predict the teacher's
centred, sharpened distribution over ``out_dim`` prototypes for every other crop of the same
utterance (:class:`~spkemb.losses.DINOLoss`). Collapse is held off by centring (the centre is an
EMA of the teacher's outputs, moved after each loss with ``update_center``) and sharpening (a
teacher temperature below the student's).

Schedules: teacher momentum ``1 - (1 - momentum) * (1 + cos(pi * p)) / 2``, from ``momentum`` at
the start to 1 at the end, with ``p = step / total_steps`` (the trainer's ``progress`` when the
run is bounded by time only), applied in :meth:`DINO.after_step`; teacher temperature linear from
``warmup_teacher_temp`` to ``teacher_temp`` over the first ``warmup_teacher_temp_steps`` steps.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from spkemb.data.crops import ViewSpec
from spkemb.losses import DINOHead, DINOLoss
from spkemb.methods.base import Method, ema_update, freeze
from spkemb.methods.common import batch_views, device_of, embed_dim_of, flatten_views
from spkemb.methods.registry import register_method
from spkemb.options import Options, opt

__all__ = ["DINO", "DINOOptions", "cosine_momentum"]


@dataclass
class DINOOptions(Options):
    """DINO's options."""

    out_dim: int = opt(4096, "K prototypes (65,536 in the image paper; thousands for speakers)")
    hidden: int = opt(2048, "hidden size of the head MLP")
    bottleneck: int = opt(256, "bottleneck size before the prototypes")
    head_layers: int = opt(3, "layers of the head MLP")
    norm_last_layer: bool = opt(True, "weight-normalised prototypes with a fixed norm")
    head_bn: bool = opt(False, "BatchNorm in the head MLP")
    teacher_temp: float = opt(0.04, "teacher temperature (sharpening)")
    warmup_teacher_temp: float = opt(0.04, "teacher temperature at the start of its warm-up")
    warmup_teacher_temp_steps: int = opt(0, "steps of linear teacher-temperature warm-up")
    student_temp: float = opt(0.1, "student temperature")
    center_momentum: float = opt(0.9, "EMA momentum of the centre")
    momentum: float = opt(0.996, "teacher EMA momentum at the start (cosine-scheduled to 1)")
    global_crops: int = opt(2, "long crops (the teacher sees these)")
    global_seconds: float = opt(3.0, "length of a global crop")
    local_crops: int = opt(4, "short crops (student only)")
    local_seconds: float = opt(1.5, "length of a local crop")
    freeze_last_layer_steps: int = opt(0, "hold the prototypes still for this many first steps")

    def __post_init__(self) -> None:
        if self.global_crops < 1 or self.global_crops + self.local_crops < 2:
            raise ValueError("DINO needs at least one global crop and two crops in all")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")


def cosine_momentum(base: float, step: int, total_steps: int | None, progress: float = 0.0) -> float:
    """Teacher momentum after ``step`` of ``total_steps``: ``base`` at 0, 1 at the end."""
    p = min(max(step / total_steps, 0.0), 1.0) if total_steps else min(max(float(progress), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (1.0 + math.cos(math.pi * p)) / 2.0


@register_method("dino")
class DINO(Method):
    """Student/teacher self-distillation with multi-crop; see the module docstring (options:
    :class:`DINOOptions`).

    Logged: ``loss``, ``teacher_temp``, ``teacher_momentum`` (the value of the latest EMA update),
    ``teacher_entropy`` (mean entropy of the teacher distribution, in nats; it falls towards 0 on
    collapse to one prototype and stays at log K on collapse to uniform), ``center_norm``.
    """

    Options = DINOOptions
    steps_done: Tensor

    def __init__(self, encoder: nn.Module, options: DINOOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = self.resolve(options, kwargs)
        self.encoder = encoder
        self.head = DINOHead(embed_dim_of(encoder), o.out_dim, o.hidden, o.bottleneck, o.head_layers,
                             o.norm_last_layer, o.head_bn)  # fmt: skip
        self.teacher_encoder = freeze(copy.deepcopy(encoder))
        self.teacher_head = freeze(copy.deepcopy(self.head))
        self.loss_fn = DINOLoss(o.out_dim, o.global_crops, o.teacher_temp, o.student_temp, o.center_momentum)
        self.base_momentum = float(o.momentum)
        self.teacher_momentum = float(o.momentum)  # the latest value used (for the logs)
        self.teacher_temp = float(o.teacher_temp)
        self.warmup_teacher_temp = float(o.warmup_teacher_temp)
        self.warmup_teacher_temp_steps = int(o.warmup_teacher_temp_steps)
        self.global_crops = int(o.global_crops)
        self.local_crops = int(o.local_crops)
        self.crops_per_item = self.global_crops + self.local_crops
        self.freeze_last_layer_steps = int(o.freeze_last_layer_steps)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    @staticmethod
    def views(o: DINOOptions) -> ViewSpec:
        spec: ViewSpec = [(int(o.global_crops), float(o.global_seconds))]
        if int(o.local_crops) > 0:
            spec.append((int(o.local_crops), float(o.local_seconds)))
        return spec

    def teacher_temp_at(self, step: int) -> float:
        """Teacher temperature for the step after ``step`` steps were taken."""
        n = self.warmup_teacher_temp_steps
        if n <= 0 or step >= n:
            return self.teacher_temp
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * step / n

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        views, _ = batch_views(batch, device_of(self))
        g = views[0]
        if g.dim() != 3 or g.shape[1] != self.global_crops:
            raise ValueError(f"DINO needs global views (B, {self.global_crops}, S), got {tuple(g.shape)}")
        b = g.shape[0]
        self.loss_fn.teacher_temp = self.teacher_temp_at(int(self.steps_done.item()))
        student: list[Tensor] = []
        for v in views:  # one encoder pass per crop length
            s = self.head(self.encoder(flatten_views(v)))
            student.extend(s.reshape(v.shape[1], b, -1).unbind(0))
        with torch.no_grad():
            t = self.teacher_head(self.teacher_encoder(flatten_views(g)))
            teacher = list(t.reshape(self.global_crops, b, -1).unbind(0))
        loss = self.loss_fn(student, teacher)
        with torch.no_grad():
            tt = torch.cat(teacher).float()
            p = torch.softmax((tt - self.loss_fn.center) / self.loss_fn.teacher_temp, dim=-1)
            entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1).mean()
        if self.training:
            self.loss_fn.update_center(teacher)
        logs = {
            "loss": float(loss.detach().item()),
            "teacher_temp": float(self.loss_fn.teacher_temp),
            "teacher_momentum": float(self.teacher_momentum),
            "teacher_entropy": float(entropy.item()),
            "center_norm": float(self.loss_fn.center.norm().item()),
        }
        return loss, logs

    def before_optimizer_step(self, step: int) -> None:
        """Hold the prototypes (the head's last layer) still for the first ``freeze_last_layer_steps``."""
        if step < self.freeze_last_layer_steps:
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int | None) -> None:
        """Teacher <- ``m * teacher + (1 - m) * student`` with the scheduled momentum ``m``."""
        m = cosine_momentum(self.base_momentum, step, total_steps, self.progress)
        self.teacher_momentum = m
        ema_update(self.teacher_encoder, self.encoder, m)
        ema_update(self.teacher_head, self.head, m)
        self.steps_done.fill_(int(step))
