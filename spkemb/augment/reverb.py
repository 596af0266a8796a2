"""Reverberation: convolve with a room impulse response (RIR) from files or simulated.

``Reverb(rir_dir)`` draws a random RIR file from a folder (recursive; e.g. the RIRS_NOISES
``simulated_rirs`` tree). ``Reverb("simulate")`` (or ``None``) draws from a pool of RIRs simulated
with pyroomacoustics' image-source method: a random shoebox room, RT60 turned into wall absorption
with ``pra.inverse_sabine``, random source and microphone positions. Simulation is slow, so each
pool entry is simulated at most once per process, when first drawn, and then reused; entry ``i`` of
the pool is a fixed function of ``(seed, i, sample_rate)``, so results do not depend on which
worker or in which order the pool was filled.

The output is aligned on the RIR's direct path (its peak), so it is not delayed, keeps the input's
length, and is rescaled to the input's power.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve

from spkemb.audio import AUDIO_EXTENSIONS, load_audio
from spkemb.augment.noise import AugmentWarning, list_audio, power
from spkemb.errors import InputError

SIMULATE = "simulate"
_EPS = 1e-10
_MAX_TRIES = 10
# Image-source cost grows with the cube of the reflection order; small rooms with a long RT60
# would need orders above 100 (seconds per RIR). The cap trims the late tail of those rooms only.
MAX_ORDER = 50

# (sample_rate, seed, index, room settings) -> RIR; per process, filled lazily.
_SIM_CACHE: dict[tuple, tuple[np.ndarray, dict]] = {}


def simulate_rir(
    rng: np.random.Generator,
    sample_rate: int,
    room_size: tuple[float, float] = (3.0, 10.0),
    height: tuple[float, float] = (2.5, 4.0),
    rt60: tuple[float, float] = (0.2, 0.8),
    max_order: int = MAX_ORDER,
) -> tuple[np.ndarray, dict]:
    """One RIR of a random shoebox room; returns ``(rir, room parameters)``."""
    import pyroomacoustics as pra

    for _ in range(_MAX_TRIES):
        dims = [float(rng.uniform(*room_size)), float(rng.uniform(*room_size)), float(rng.uniform(*height))]
        t60 = float(rng.uniform(*rt60))
        margin = 0.5
        src = [float(rng.uniform(margin, d - margin)) for d in dims]
        mic = [float(rng.uniform(margin, d - margin)) for d in dims]
        if math.dist(src, mic) < 0.5:
            continue
        try:
            absorption, order = pra.inverse_sabine(t60, dims)
        except ValueError:  # RT60 not reachable in this room: draw another
            continue
        room = pra.ShoeBox(
            dims, fs=sample_rate, materials=pra.Material(absorption), max_order=min(int(order), max_order)
        )
        room.add_source(src)
        room.add_microphone(mic)
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], dtype=np.float32)
        if len(rir) and np.all(np.isfinite(rir)) and np.max(np.abs(rir)) > 0:
            params = {"room": [round(d, 2) for d in dims], "rt60": round(t60, 3), "source": src, "mic": mic}
            return rir, params
    raise RuntimeError("could not simulate a room impulse response")


def apply_rir(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve, align on the RIR's peak (direct path), keep the length and the power of ``x``."""
    if len(x) == 0:
        return x
    rir = np.asarray(rir, dtype=np.float64)
    peak = int(np.argmax(np.abs(rir)))
    y = fftconvolve(x.astype(np.float64), rir)[peak : peak + len(x)]
    p_in, p_out = power(x), power(y)
    if p_out > _EPS:
        y *= math.sqrt(p_in / p_out)
    return y.astype(np.float32)


class Reverb:
    """Convolve with a random RIR from ``rir_dir``, or a simulated one (``None``/``"simulate"``).

    ``__call__(x, sample_rate, rng)`` returns ``(y, {"rir": id})``: the file path, or ``sim:I``
    (with the room's size and RT60) for pool entry I.
    """

    name = "reverb"

    def __init__(
        self,
        rir_dir: str | Path | None = None,
        sample_rate: int = 16000,
        pool_size: int = 50,
        seed: int = 0,
        rt60: tuple[float, float] = (0.2, 0.8),
        room_size: tuple[float, float] = (3.0, 10.0),
    ) -> None:
        self.sample_rate = int(sample_rate)
        self.simulate = rir_dir is None or str(rir_dir) == SIMULATE
        self.pool_size = int(pool_size)
        self.seed = int(seed)
        self.rt60 = (float(rt60[0]), float(rt60[1]))
        self.room_size = (float(room_size[0]), float(room_size[1]))
        self.files: list[str] = []
        self._cache: dict[str, np.ndarray] = {}
        self._bad: set[str] = set()
        if self.simulate:
            if self.pool_size < 1:
                raise ValueError("pool_size must be at least 1")
            return
        root = Path(str(rir_dir))
        if not root.is_dir():
            raise InputError(f"no such RIR folder (give a folder of RIR files or '{SIMULATE}')", rir_dir)
        self.files = list_audio(root)
        if not self.files:
            raise InputError(f"no RIR audio files ({', '.join(AUDIO_EXTENSIONS)}) found", rir_dir)

    def __repr__(self) -> str:
        what = f"simulate, pool={self.pool_size}" if self.simulate else f"{len(self.files)} files"
        return f"Reverb({what})"

    def __call__(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict | None]:
        if len(x) == 0:
            return x, None
        if self.simulate:
            i = int(rng.integers(0, self.pool_size))
            rir, room = self.pooled(i, sample_rate)
            return apply_rir(x, rir), {"rir": f"sim:{i}", "room": room["room"], "rt60": room["rt60"]}
        # A random order over all files (bad ones included): the draws never depend on what this
        # process already found bad, so they are the same in every worker and after a resume.
        for k in rng.permutation(len(self.files))[:_MAX_TRIES]:
            path = self.files[int(k)]
            if path in self._bad:
                continue
            loaded = self._load(path, sample_rate)
            if loaded is not None:
                return apply_rir(x, loaded), {"rir": path}
        return x, None

    def pooled(self, index: int, sample_rate: int | None = None) -> tuple[np.ndarray, dict]:
        """Pool entry ``index`` (simulated on first use in this process, then cached)."""
        sr = int(sample_rate or self.sample_rate)
        key = (sr, self.seed, index, self.rt60, self.room_size)
        hit = _SIM_CACHE.get(key)
        if hit is None:
            rng = np.random.default_rng([self.seed, index, sr])
            rir, params = simulate_rir(rng, sr, room_size=self.room_size, rt60=self.rt60)
            _SIM_CACHE[key] = hit = (rir, params)
        return hit

    def _load(self, path: str, sample_rate: int) -> np.ndarray | None:
        key = f"{sample_rate}:{path}"
        rir = self._cache.get(key)
        if rir is not None:
            return rir
        try:
            rir = load_audio(path, sample_rate)
            if not np.all(np.isfinite(rir)) or np.max(np.abs(rir)) <= 0:
                raise ValueError("silent or non-finite RIR")
        except Exception as err:  # never crash a training worker on a bad RIR file
            self._bad.add(path)
            warnings.warn(f"{path}: skipping RIR file ({err})", AugmentWarning, stacklevel=3)
            return None
        if len(self._cache) < 2048:  # RIRs are short: keep up to 2048 decoded ones
            self._cache[key] = rir
        return rir
