"""What the Trainer tells the outside world, through a :class:`Reporter` the caller supplies.

The Trainer draws nothing itself: a library user gets a quiet Trainer (the base class does
nothing), the CLI passes a reporter that draws a rich progress bar on a terminal and plain lines in
logs. Metrics go to ``metrics.jsonl`` whatever the reporter does.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Reporter", "StepReport", "MetricsWindow"]


@dataclass(frozen=True)
class StepReport:
    """The state after one optimiser step."""

    step: int
    total: int | None  # max_steps (None when only a time budget bounds the run)
    epoch: int
    loss: float
    lr: float
    crops_per_s: float
    elapsed: float  # seconds of training, resumed runs included


class Reporter:
    """Callbacks of a training run; every method is optional (the base class is silent). Only the
    main process (rank 0) reports."""

    def start(self, description: str, step: int, total: int | None) -> None:
        """The run starts (or resumes) at ``step`` of ``total``."""

    def step(self, report: StepReport) -> None:
        """After every optimiser step."""

    def message(self, text: str, warning: bool = False) -> None:
        """A line for the user (resuming from ..., a changed setting, a corrupt checkpoint). The
        base class is silent except for warnings, which go to stderr as plain lines."""
        if warning:
            print(f"warning: {text}", file=sys.stderr, flush=True)

    def checkpoint(self, path: Path, step: int) -> None:
        """A checkpoint was written."""

    def end(self) -> None:
        """The loop is over (finished, failed or interrupted)."""


class MetricsWindow:
    """Running sums between two metrics lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.loss = 0.0
        self.crops = 0.0
        self.logs: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.t0 = time.monotonic()

    def add(self, loss: float, crops: float, logs: dict[str, Any]) -> None:
        self.steps += 1
        self.loss += loss
        self.crops += crops
        for k, v in logs.items():
            with contextlib.suppress(TypeError, ValueError):
                value = float(v)
                if math.isfinite(value):  # metrics.jsonl stays strict JSON (no NaN)
                    self.logs[k] = self.logs.get(k, 0.0) + value
                    self.counts[k] = self.counts.get(k, 0) + 1

    def crops_per_s(self) -> float:
        return self.crops / max(1e-9, time.monotonic() - self.t0)

    def means(self) -> dict[str, float]:
        """The method's logs averaged over the window."""
        return {k: v / self.counts[k] for k, v in self.logs.items()}
