"""Random gain in decibels."""

from __future__ import annotations

import numpy as np


class RandomGain:
    """Multiply by ``10 ** (g / 20)`` with ``g`` uniform in ``[min_db, max_db]``.

    ``__call__(x, sample_rate, rng)`` returns ``(y, {"gain_db": g})``. Clipping is left to the
    :class:`~spkemb.augment.chain.Augmenter`, which scales the final output down if it peaks.
    """

    name = "gain"

    def __init__(self, min_db: float = -6.0, max_db: float = 6.0) -> None:
        if min_db > max_db:
            raise ValueError(f"min_db ({min_db}) > max_db ({max_db})")
        self.min_db, self.max_db = float(min_db), float(max_db)

    def __repr__(self) -> str:
        return f"RandomGain({self.min_db:g}..{self.max_db:g} dB)"

    def __call__(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        g = float(rng.uniform(self.min_db, self.max_db))
        return (x * np.float32(10.0 ** (g / 20.0))).astype(np.float32), {"gain_db": round(g, 3)}
