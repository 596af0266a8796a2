"""Kaldi-style speed perturbation: resample so the signal plays ``factor`` times faster.

Duration becomes ``len / factor`` and pitch moves with it (like ``sox speed``), which is why
supervised recipes often treat each speed as a new speaker; the chosen factor is returned in the
record so training code can do that.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spkemb.audio import speed_change

__all__ = ["SpeedPerturb", "speed_change"]


class SpeedPerturb:
    """Pick one of ``factors`` uniformly (or by ``weights``) and change the speed by it.

    ``__call__(x, sample_rate, rng)`` returns ``(y, {"factor": f})``.
    """

    name = "speed"

    def __init__(self, factors: Sequence[float] = (0.9, 1.0, 1.1), weights: Sequence[float] | None = None):
        self.factors = tuple(float(f) for f in factors)
        if not self.factors or any(f <= 0 for f in self.factors):
            raise ValueError(f"speed factors must be positive, got {factors}")
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(self.factors),) or np.any(w < 0) or w.sum() <= 0:
                raise ValueError("weights must be non-negative, one per factor, not all zero")
            self.weights: np.ndarray | None = w / w.sum()
        else:
            self.weights = None

    def __repr__(self) -> str:
        return f"SpeedPerturb(factors={self.factors})"

    def draw(self, rng: np.random.Generator) -> float:
        """One factor, as ``__call__`` would pick it."""
        return self.factors[int(rng.choice(len(self.factors), p=self.weights))]

    def __call__(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        factor = self.draw(rng)
        return speed_change(x, factor), {"factor": factor}
