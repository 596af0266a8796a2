"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

The schedule is a pure function of the step and the elapsed training time (both checkpointed), so
a resumed run continues on exactly the same curve. ``step`` is the number of optimiser steps
already taken (0 for the first step).

Warm-up: ``lr = base_lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``.
Cosine: ``lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2`` where ``p`` is the
progress after warm-up:

* bounded by steps: ``p = (step - warmup_steps) / (max_steps - warmup_steps)``;
* bounded by time: ``p = elapsed / (60 * max_minutes)`` (the whole wall-clock budget, warm-up
  included, since the number of steps is unknown; warm-up is short, so the curve starts a hair
  below ``base_lr``);
* bounded by both: the larger of the two, so the lr reaches the floor when the first bound does.
"""

from __future__ import annotations

import math


def progress(step: int, elapsed_s: float, max_steps: int | None, max_minutes: float | None) -> float:
    """Fraction of the run done, in [0, 1]: the larger of the step and time fractions that apply."""
    fractions = []
    if max_steps is not None:
        fractions.append(step / max(1, max_steps))
    if max_minutes is not None:
        fractions.append(elapsed_s / (60.0 * max_minutes))
    if not fractions:
        raise ValueError("progress needs max_steps or max_minutes")
    return min(1.0, max(0.0, max(fractions)))


def cosine_progress(
    step: int, elapsed_s: float, warmup_steps: int, max_steps: int | None, max_minutes: float | None
) -> float:
    """Progress along the cosine part of the schedule, in [0, 1] (see the module docstring)."""
    fractions = []
    if max_steps is not None:
        fractions.append((step - warmup_steps) / max(1, max_steps - warmup_steps))
    if max_minutes is not None:
        fractions.append(elapsed_s / (60.0 * max_minutes))
    if not fractions:
        raise ValueError("the schedule needs max_steps or max_minutes")
    return min(1.0, max(0.0, max(fractions)))


def lr_at(
    step: int,
    elapsed_s: float,
    *,
    base_lr: float,
    min_lr: float = 0.0,
    warmup_steps: int = 0,
    max_steps: int | None = None,
    max_minutes: float | None = None,
) -> float:
    """The learning rate for the optimiser step taken after ``step`` steps and ``elapsed_s`` seconds."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    p = cosine_progress(step, elapsed_s, warmup_steps, max_steps, max_minutes)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
