"""Compose augmentation steps, each applied with its own probability, and record what was done.

A step is any callable ``step(x, sample_rate, rng) -> (y, params | None)`` with a ``name``
attribute (:class:`~spkemb.augment.noise.AddNoise`, :class:`~spkemb.augment.reverb.Reverb`,
:class:`~spkemb.augment.speed.SpeedPerturb`, :class:`~spkemb.augment.gain.RandomGain`). The
:class:`Augmenter` returns the augmented waveform and a record ``{step name: params}`` of the steps
that were applied, e.g. ``{"speed": {"factor": 1.1}, "noise": {"category": "music", "file": ...,
"snr": 7.2}}``. Training reads the speed factor from it; ``spkemb augment`` writes it to
``augment.jsonl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spkemb.augment.options import AugmentOptions

PEAK = 0.999  # the output never peaks above this (scaled down as a whole, never hard-clipped)


class Step(Protocol):
    name: str

    def __call__(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict | None]: ...


class Augmenter:
    """Apply ``steps`` in order, each with probability ``probs[i]`` (default 1).

    ``__call__(x, sample_rate, rng) -> (y, record)``: ``y`` is 1-D float32, the same length as
    ``x`` unless speed perturbation changed it, and peak-safe (scaled down as a whole when it
    would exceed ±1, which keeps every SNR; the record then has ``"peak_scale"``). The result is
    a deterministic function of ``x`` and the state of ``rng``: exactly one uniform is drawn per
    step for its coin, whether or not it fires.
    """

    def __init__(self, steps: Sequence[Step], probs: Sequence[float] | None = None) -> None:
        self.steps = list(steps)
        self.probs = [1.0] * len(self.steps) if probs is None else [float(p) for p in probs]
        if len(self.probs) != len(self.steps):
            raise ValueError(f"{len(self.steps)} steps but {len(self.probs)} probabilities")
        for p in self.probs:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"probability {p} is not in [0, 1]")

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        inner = ", ".join(f"{s!r}@p={p:g}" for s, p in zip(self.steps, self.probs, strict=True))
        return f"Augmenter([{inner}])"

    def __call__(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        y = np.asarray(x, dtype=np.float32)
        if y.ndim != 1:
            raise ValueError(f"expected a 1-D waveform, got shape {y.shape}")
        record: dict[str, Any] = {}
        for step, p in zip(self.steps, self.probs, strict=True):
            coin = rng.random()
            if coin >= p:
                continue
            y, params = step(y, sample_rate, rng)
            if params is not None:
                key = step.name
                n = 2
                while key in record:
                    key, n = f"{step.name}{n}", n + 1
                record[key] = params
        y = np.nan_to_num(np.asarray(y, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(np.max(np.abs(y))) if len(y) else 0.0
        if peak > PEAK:
            scale = PEAK / peak
            y = (y * np.float32(scale)).astype(np.float32)
            record["peak_scale"] = round(scale, 6)
        if y is x:
            y = y.copy()
        return y, record

    def split(self, name: str) -> tuple[Step | None, float, Augmenter]:
        """``(step, probability, the rest)`` for the first step called ``name`` (``(None, 0, self)``
        when there is none). The self-supervised crops draw speed once per utterance this way."""
        for i, step in enumerate(self.steps):
            if step.name == name:
                rest = Augmenter(self.steps[:i] + self.steps[i + 1 :], self.probs[:i] + self.probs[i + 1 :])
                return step, self.probs[i], rest
        return None, 0.0, self

    @classmethod
    def from_options(cls, *args: Any, **kwargs: Any) -> Augmenter:
        """Same as :func:`from_options`."""
        return from_options(*args, **kwargs)


def from_options(
    noise_dirs: Sequence[str | Path] | None = None,
    rir: str | Path | None = None,
    speed: bool = False,
    gain: bool = False,
    sample_rate: int = 16000,
    p_noise: float = AugmentOptions.p_noise,
    p_reverb: float = AugmentOptions.p_reverb,
    p_speed: float = 1.0,
    p_gain: float = 1.0,
    *,
    speed_factors: Sequence[float] = (0.9, 1.0, 1.1),
    gain_db: tuple[float, float] = (-6.0, 6.0),
    snr: dict[str, tuple[float, float]] | None = None,
    babble_talkers: tuple[int, int] = (3, 7),
    rir_pool: int = 50,
    rir_seed: int = 0,
) -> Augmenter:
    """The standard chain: speed → reverb → noise → gain, each only if asked for.

    ``noise_dirs``: MUSAN roots or plain folders of noise audio (none: no additive noise).
    ``rir``: a folder of RIR files, ``"simulate"`` for pyroomacoustics rooms, or None (no reverb).
    ``speed``: Kaldi-style speed perturbation by one of ``speed_factors`` (1.0 included, so
    ``p_speed=1`` still leaves a third of the examples at normal speed). ``gain``: random gain in
    ``gain_db``. Missing folders raise :class:`~spkemb.errors.InputError`.
    """
    from spkemb.augment.gain import RandomGain
    from spkemb.augment.noise import AddNoise, NoiseBank
    from spkemb.augment.reverb import Reverb
    from spkemb.augment.speed import SpeedPerturb

    steps: list[Step] = []
    probs: list[float] = []
    if speed:
        steps.append(SpeedPerturb(speed_factors))
        probs.append(p_speed)
    if rir is not None and str(rir) != "":
        steps.append(Reverb(rir, sample_rate, pool_size=rir_pool, seed=rir_seed))
        probs.append(p_reverb)
    if noise_dirs:
        steps.append(AddNoise(NoiseBank(list(noise_dirs)), snr=snr, babble_talkers=babble_talkers))
        probs.append(p_noise)
    if gain:
        steps.append(RandomGain(*gain_db))
        probs.append(p_gain)
    return Augmenter(steps, probs)


def build_augmenter(options: AugmentOptions, sample_rate: int) -> Augmenter | None:
    """The chain that ``options`` describe (``None`` when no step is switched on)."""
    if not options.active:
        return None
    return from_options(
        list(options.noise) or None,
        options.rir,
        speed=options.speed,
        gain=options.gain,
        sample_rate=sample_rate,
        p_noise=options.p_noise,
        p_reverb=options.p_reverb,
    )
