"""The optimiser, seeding, CPU threads and compilation: the pieces a Trainer sets up once."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from spkemb.errors import InputError
from spkemb.train.config import TrainConfig
from spkemb.utils import distributed as dist_

__all__ = ["build_optimizer", "compile_encoder", "seed_everything", "limit_cpu_threads"]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA). Call before building the method so that its
    initial weights are reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def limit_cpu_threads(device: torch.device) -> None:
    """On CPU, share the cores between the processes of this machine (unless OMP_NUM_THREADS says)."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    budget = max(1, cores // max(1, dist_.local_world_size()))
    if torch.get_num_threads() > budget:
        torch.set_num_threads(budget)


def compile_encoder(method: nn.Module) -> None:
    """``torch.compile`` the method's trained encoder in place (``nn.Module.compile``), so that its
    state-dict keys, and hence checkpoints and ``encoder.pt``, are the same with and without it."""
    encoder = getattr(method, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise InputError(f"compile: {type(method).__name__} has no .encoder module to compile")
    encoder.compile()


def build_optimizer(method: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9, Nesterov) over the parameters that require gradients; no weight
    decay on biases, norm weights and other 1-D parameters (scales, temperatures).

    A method may group its parameters itself with ``param_groups() -> [{"params": [...], "lr_scale":
    0.1}, ...]`` (a lower learning rate for a pretrained encoder than for a new head, layer-wise
    decay); each group's lr is then ``lr_scale`` times the scheduled one.
    """
    groups_fn = getattr(method, "param_groups", None)
    raw: list[dict[str, Any]] = (groups_fn() if callable(groups_fn)
                                 else [{"params": list(method.parameters()), "lr_scale": 1.0}])  # fmt: skip
    groups: list[dict[str, Any]] = []
    for g in raw:
        decay = [p for p in g["params"] if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in g["params"] if p.requires_grad and p.ndim <= 1]
        scale = float(g.get("lr_scale", 1.0))
        groups += [{"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": scale},
                   {"params": no_decay, "weight_decay": 0.0, "lr_scale": scale}]  # fmt: skip
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise InputError(f"method {cfg.method!r} has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled ``lr`` on every group, times the group's ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * float(group.get("lr_scale", 1.0))
