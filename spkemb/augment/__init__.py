"""Waveform augmentation: additive noise (MUSAN-style), reverberation, speed, gain; SpecAugment.

The waveform steps work on 1-D float32 numpy arrays with a ``numpy.random.Generator`` passed in,
so they run in DataLoader workers without torch; :class:`SpecAugment` (torch) is imported lazily.
:func:`run_offline` writes augmented copies of a manifest's audio to a folder (``spkemb augment``).
Names are imported on first use, so ``spkemb.augment.options`` is cheap for the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spkemb.augment.chain import Augmenter, Step, build_augmenter, from_options
    from spkemb.augment.gain import RandomGain
    from spkemb.augment.noise import CATEGORIES, AddNoise, AugmentWarning, NoiseBank
    from spkemb.augment.offline import OfflineOptions, OfflineResult, run_offline
    from spkemb.augment.options import AugmentOptions
    from spkemb.augment.reverb import Reverb, apply_rir, simulate_rir
    from spkemb.augment.specaug import SpecAugment
    from spkemb.augment.speed import SpeedPerturb, speed_change

_WHERE = {
    "Augmenter": "chain", "Step": "chain", "from_options": "chain", "build_augmenter": "chain",
    "RandomGain": "gain",
    "CATEGORIES": "noise", "AddNoise": "noise", "AugmentWarning": "noise", "NoiseBank": "noise",
    "OfflineOptions": "offline", "OfflineResult": "offline", "run_offline": "offline",
    "AugmentOptions": "options",
    "Reverb": "reverb", "apply_rir": "reverb", "simulate_rir": "reverb",
    "SpecAugment": "specaug",
    "SpeedPerturb": "speed", "speed_change": "speed",
}  # fmt: skip

__all__ = [
    "AddNoise",
    "AugmentOptions",
    "AugmentWarning",
    "Augmenter",
    "CATEGORIES",
    "NoiseBank",
    "OfflineOptions",
    "OfflineResult",
    "RandomGain",
    "Reverb",
    "SpecAugment",
    "SpeedPerturb",
    "Step",
    "apply_rir",
    "build_augmenter",
    "from_options",
    "run_offline",
    "simulate_rir",
    "speed_change",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"spkemb.augment.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
