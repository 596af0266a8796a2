"""Additive noise from MUSAN-style folders, mixed at a random signal-to-noise ratio.

A :class:`NoiseBank` indexes one or more folders once (recursively, by audio extension):

* a MUSAN root (with any of the subfolders ``noise``, ``music``, ``speech``) gives the categories
  ``noise``, ``music`` and ``babble`` (babble is several ``speech`` files summed);
* a plain folder gives the category ``noise`` (or ``music``/``babble`` when the folder itself is
  named ``music``/``speech``, e.g. ``--noise musan/music``).

Only a random segment of the needed length is decoded from a noise file (a seek, never the whole
file); a file shorter than the signal is looped. Files that turn out empty or unreadable are
skipped for the rest of the process, with one warning each, so a bad file never stops training.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from spkemb.audio import AUDIO_EXTENSIONS, AudioInfo, audio_info, load_audio
from spkemb.data.layouts import list_audio as relative_audio_paths
from spkemb.errors import InputError

CATEGORIES = ("noise", "music", "babble")
MUSAN_SUBDIRS = {"noise": "noise", "music": "music", "speech": "babble"}
DEFAULT_SNR: dict[str, tuple[float, float]] = {"noise": (0.0, 15.0), "music": (5.0, 15.0), "babble": (13.0, 20.0)}
_EPS = 1e-10
_MAX_TRIES = 32


class AugmentWarning(UserWarning):
    """A noise or RIR file was skipped (empty or unreadable); augmentation went on without it."""


def list_audio(folder: str | Path) -> list[str]:
    """Absolute paths of the audio files under ``folder`` (recursive, sorted, hidden files skipped)."""
    root = Path(folder)
    return [str(root / rel) for rel in relative_audio_paths(root)]


def power(x: np.ndarray) -> float:
    """Mean power of a signal (float64 accumulation)."""
    return float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0


class NoiseBank:
    """The noise files of one or more folders, by category; the file list is built once."""

    def __init__(self, dirs: str | Path | Iterable[str | Path]) -> None:
        if isinstance(dirs, str | Path):
            dirs = [dirs]
        self.dirs = [str(d) for d in dirs]
        self.files: dict[str, list[str]] = {c: [] for c in CATEGORIES}
        for d in self.dirs:
            root = Path(d)
            if not root.is_dir():
                raise InputError("no such noise folder", d)
            subdirs = {name: cat for name, cat in MUSAN_SUBDIRS.items() if (root / name).is_dir()}
            if subdirs:
                for name, cat in subdirs.items():
                    self.files[cat].extend(list_audio(root / name))
            else:
                cat = MUSAN_SUBDIRS.get(root.resolve().name.lower(), "noise")
                self.files[cat].extend(list_audio(root))
            if not any(self.files.values()):
                raise InputError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found", d)
        for cat in CATEGORIES:
            self.files[cat] = sorted(set(self.files[cat]))
        self._info: dict[str, AudioInfo] = {}
        self._bad: set[str] = set()

    @property
    def categories(self) -> list[str]:
        """Categories with at least one file, in the fixed order noise, music, babble."""
        return [c for c in CATEGORIES if self.files[c]]

    def __len__(self) -> int:
        return sum(len(v) for v in self.files.values())

    def __repr__(self) -> str:
        counts = ", ".join(f"{c}={len(self.files[c])}" for c in CATEGORIES)
        return f"NoiseBank({counts})"

    # -- reading ---------------------------------------------------------------------------------

    def read_segment(self, path: str, length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        """``length`` samples at ``sample_rate`` from a random place of ``path`` (looped if short).

        Raises whatever decoding raises; :meth:`draw` is the forgiving entry point.
        """
        info = self._info.get(path)
        if info is None:
            info = self._info[path] = audio_info(path)
        # Frames needed at the file's own rate, with a small margin for the resampler.
        need = math.ceil(length * info.sample_rate / sample_rate) + (0 if info.sample_rate == sample_rate else 8)
        if info.frames > need:
            start = int(rng.integers(0, info.frames - need + 1))
            x = load_audio(path, sample_rate, start_frame=start, num_frames=need)
            if len(x) >= length:
                return x[:length]
            # Rare: the header over-reported the length; fall through to looping what we got.
        else:
            x = load_audio(path, sample_rate)
        if len(x) == 0:
            raise InputError("empty audio (0 samples)", path)
        off = int(rng.integers(0, len(x)))
        reps = -(-(off + length) // len(x))
        return np.tile(x, reps)[off : off + length]

    def draw(
        self,
        category: str,
        length: int,
        sample_rate: int,
        rng: np.random.Generator,
        exclude: Sequence[str] = (),
    ) -> tuple[np.ndarray, str] | None:
        """A non-silent segment of a random file of ``category``, or None if no file is usable.

        Bad files are skipped (with one warning each) and not read again in this process. The draws
        do not depend on which files this process already found bad, so a resumed run with fresh
        workers draws exactly what the first one did.
        """
        candidates = [f for f in self.files.get(category, ()) if f not in exclude]
        if not candidates:
            return None
        # A random order over all files (bad ones included) and one seed per try, drawn up front: the
        # random numbers consumed never depend on what this process has already found bad.
        order = rng.permutation(len(candidates))[:_MAX_TRIES]
        seeds = rng.integers(2**63, size=len(order))
        for k, seed in zip(order, seeds, strict=True):
            path = candidates[int(k)]
            if path in self._bad:
                continue
            try:
                seg = self.read_segment(path, length, sample_rate, np.random.default_rng(int(seed)))
            except Exception as err:  # never crash a training worker on a bad noise file
                self._skip(path, err)
                continue
            if not np.all(np.isfinite(seg)):
                self._skip(path, ValueError("non-finite samples"))
                continue
            if power(seg) > _EPS:
                return seg.astype(np.float32, copy=False), path
            # A silent stretch: try another file. A short file that was read whole is silent throughout.
            info = self._info.get(path)
            if info is not None and info.frames * sample_rate <= length * info.sample_rate:
                self._skip(path, ValueError("silent audio"))
        return None

    def _skip(self, path: str, err: BaseException) -> None:
        if path in self._bad:
            return
        self._bad.add(path)
        warnings.warn(f"{path}: skipping noise file ({err})", AugmentWarning, stacklevel=3)


class AddNoise:
    """Add a noise of a random category at a random SNR drawn from that category's range.

    SNR is computed on the power of the whole input signal and of the added noise (babble: the
    sum of ``babble_talkers`` speech segments, each normalised to unit power before summing).
    ``__call__`` returns ``(y, params)``; params is None when nothing was added (silent input, or
    no usable noise file).
    """

    name = "noise"

    def __init__(
        self,
        bank: NoiseBank,
        snr: dict[str, tuple[float, float]] | None = None,
        babble_talkers: tuple[int, int] = (3, 7),
        categories: Sequence[str] | None = None,
    ) -> None:
        self.bank = bank
        self.snr = dict(DEFAULT_SNR)
        if snr:
            self.snr.update({k: (float(v[0]), float(v[1])) for k, v in snr.items()})
        for cat, (lo, hi) in self.snr.items():
            if lo > hi:
                raise ValueError(f"SNR range for {cat} is empty: {lo} > {hi}")
        lo_t, hi_t = babble_talkers
        if not 1 <= lo_t <= hi_t:
            raise ValueError(f"babble_talkers must be 1 <= min <= max, got {babble_talkers}")
        self.babble_talkers = (int(lo_t), int(hi_t))
        cats = list(categories) if categories is not None else bank.categories
        unknown = [c for c in cats if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown noise category {unknown[0]!r}; choose from {', '.join(CATEGORIES)}")
        self.categories = [c for c in cats if bank.files[c]]

    def __call__(self, x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict | None]:
        if not self.categories or len(x) == 0:
            return x, None
        p_sig = power(x)
        category = self.categories[int(rng.integers(0, len(self.categories)))]
        lo, hi = self.snr[category]
        snr = float(rng.uniform(lo, hi))
        if p_sig <= _EPS:
            return x, None
        if category == "babble":
            got = self._babble(len(x), sample_rate, rng)
            if got is None:
                return x, None
            noise, files = got
            params: dict = {"category": category, "snr": round(snr, 3), "talkers": len(files), "files": files}
        else:
            drawn = self.bank.draw(category, len(x), sample_rate, rng)
            if drawn is None:
                return x, None
            noise, path = drawn
            params = {"category": category, "snr": round(snr, 3), "file": path}
        p_noise = power(noise)
        if p_noise <= _EPS:
            return x, None
        scale = math.sqrt(p_sig / (p_noise * 10.0 ** (snr / 10.0)))
        y = (x.astype(np.float64) + scale * noise.astype(np.float64)).astype(np.float32)
        return y, params

    def _babble(self, length: int, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]] | None:
        lo, hi = self.babble_talkers
        want = int(rng.integers(lo, hi + 1))
        total = np.zeros(length, dtype=np.float64)
        files: list[str] = []
        for _ in range(want):
            # Distinct talkers while there are enough files; repeats only for tiny banks.
            distinct = len(files) < len(self.bank.files["babble"])
            drawn = self.bank.draw("babble", length, sample_rate, rng, exclude=files if distinct else ())
            if drawn is None and files:
                drawn = self.bank.draw("babble", length, sample_rate, rng)
            if drawn is None:
                break
            seg, path = drawn
            total += seg / math.sqrt(power(seg))
            files.append(path)
        if not files:
            return None
        return total, files
