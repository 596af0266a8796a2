"""The augmentation's options, stated once: training's ``data_options``, ``spkemb augment`` and
:func:`~spkemb.augment.chain.from_options` all take their defaults from :class:`AugmentOptions`."""

from __future__ import annotations

from dataclasses import dataclass

from spkemb.options import Options, opt

__all__ = ["AugmentOptions"]


@dataclass
class AugmentOptions(Options):
    """What the standard chain (speed -> reverb -> noise -> gain) does; each step only if asked for."""

    noise: tuple[str, ...] = opt((), "noise folders: MUSAN roots (noise/, music/, speech/) or plain folders")
    rir: str | None = opt(None, "a folder of room impulse responses, or 'simulate' (pyroomacoustics rooms)")
    speed: bool = opt(False, "speed perturbation by 0.9, 1.0 or 1.1 (duration and pitch change together)")
    gain: bool = opt(False, "random gain in -6..6 dB")
    p_noise: float = opt(0.6, "probability of adding noise")
    p_reverb: float = opt(0.3, "probability of reverberation")

    def __post_init__(self) -> None:
        if isinstance(self.noise, str):  # one folder given as a string
            self.noise = (self.noise,)
        for name, p in (("p_noise", self.p_noise), ("p_reverb", self.p_reverb)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {p}")
        if self.rir is not None and not str(self.rir).strip():
            raise ValueError("rir needs a folder of RIR files or 'simulate'")

    @property
    def active(self) -> bool:
        """Whether any step is switched on."""
        return bool(self.noise or self.rir or self.speed or self.gain)
