"""Waveform augmentation: additive noise (MUSAN-style), reverberation, speed, gain; SpecAugment.

The waveform steps work on 1-D float32 numpy arrays with a ``numpy.random.Generator`` passed in,
so they run in DataLoader workers without torch; :class:`SpecAugment` (torch) is imported lazily.
:func:`run_offline` writes augmented copies of a manifest's audio to a folder (``spkemb augment``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spkemb.augment.chain import Augmenter, Step, from_options
from spkemb.augment.gain import RandomGain
from spkemb.augment.noise import CATEGORIES, AddNoise, AugmentWarning, NoiseBank
from spkemb.augment.offline import OfflineOptions, OfflineResult, run_offline
from spkemb.augment.reverb import Reverb, apply_rir, simulate_rir
from spkemb.augment.speed import SpeedPerturb, speed_change

if TYPE_CHECKING:
    from spkemb.augment.specaug import SpecAugment

__all__ = [
    "CATEGORIES",
    "AddNoise",
    "AugmentWarning",
    "Augmenter",
    "NoiseBank",
    "OfflineOptions",
    "OfflineResult",
    "RandomGain",
    "Reverb",
    "SpecAugment",
    "SpeedPerturb",
    "Step",
    "apply_rir",
    "from_options",
    "run_offline",
    "simulate_rir",
    "speed_change",
]


def __getattr__(name: str) -> Any:
    if name == "SpecAugment":
        from spkemb.augment.specaug import SpecAugment

        return SpecAugment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
