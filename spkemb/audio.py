"""Audio I/O: decode with soundfile, downmix, resample, crop/pad, energy VAD.

Everything here works on 1-D float32 numpy arrays so that it can run inside DataLoader workers
without touching torch. Reading a segment seeks in the file and decodes only the frames needed.
Decoded samples that are NaN or infinite make the file bad audio (:class:`InputError`), as does a
file the OS will not open, with words for why (:func:`os_problem`).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from spkemb.errors import InputError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".sph", ".aiff", ".aif")


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of one file, read without decoding it."""

    path: str
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def audio_info(path: str | Path) -> AudioInfo:
    """Read the header of ``path``; raise :class:`InputError` for unreadable or empty files."""
    try:
        info = sf.info(_sf_name(path))
    except (sf.LibsndfileError, RuntimeError, OSError, UnicodeError) as err:
        raise InputError(os_problem(path) or f"cannot read audio ({_short(err)})", path) from None
    frames = int(info.frames)
    if frames <= 0 or info.samplerate <= 0:
        # Some containers (MP3, OGG) report no frame count in the header: count by decoding.
        if frames < 0 or (frames == 0 and Path(path).suffix.lower() in (".mp3", ".ogg", ".opus")):
            frames = len(_read(path, 0, -1))
        if frames <= 0:
            raise InputError("empty audio (0 samples)", path)
    return AudioInfo(str(path), int(info.samplerate), frames, int(info.channels))


_ERRNO_WORDS = {
    errno.ENOENT: "no such file",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "symbolic link loop",
    errno.EISDIR: "is a folder, not an audio file",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error (a failing disk or network mount?)",
}


def os_problem(path: str | Path) -> str | None:
    """Why the OS will not let ``path`` be read (missing, permission, link loop, ...), or None.

    libsndfile reports all of these as "System error."; this says which. It runs only after a
    failed read, so the happy path pays nothing for it.
    """
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return _ERRNO_WORDS[errno.EISDIR]
        with open(path, "rb") as f:
            f.read(1)
    except UnicodeError:
        return "file name cannot be encoded for this system (not valid UTF-8?)"
    except OSError as err:
        if not os.path.exists(path) and os.path.lexists(path) and err.errno != errno.ELOOP:
            return "broken symbolic link (its target does not exist)"
        return _ERRNO_WORDS.get(err.errno or 0, err.strerror or type(err).__name__)
    return None


def verify_audio(path: str | Path, block: int = 1 << 18) -> AudioInfo:
    """Decode all of ``path`` (in blocks, so memory stays small) and return its facts as decoded.

    Raises :class:`InputError` when it cannot be decoded to the end, holds NaN or infinite
    samples, or decodes to clearly fewer frames than its header promises (a truncated file: headers
    are written first, so a cut-off copy still claims the whole duration). The facts returned are
    those decoded.
    """
    head = audio_info(path)
    frames = 0
    try:
        with sf.SoundFile(_sf_name(path)) as f:
            for data in f.blocks(blocksize=block, dtype="float32", always_2d=True):
                check_finite(data, path)
                frames += len(data)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        where = f" after {frames / head.sample_rate:.3f} s" if frames else ""
        raise InputError(f"cannot decode audio{where} ({_short(err)}; truncated or corrupt?)", path) from None
    if frames == 0:
        raise InputError("empty audio (0 samples)", path)
    if head.frames - frames > max(1, head.frames // 100):  # (compressed formats' headers may be estimates)
        raise InputError(
            f"truncated: the header says {head.duration:.3f} s, only {frames / head.sample_rate:.3f} s decode", path
        )
    return AudioInfo(str(path), head.sample_rate, frames, head.channels)


def _sf_name(path: str | Path) -> str | bytes:
    """The name to give soundfile: bytes on POSIX, so that any file name the OS holds (not only
    valid UTF-8) opens; soundfile would encode a str strictly."""
    return str(path) if os.name == "nt" else os.fsencode(path)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]


def _read(path: str | Path, start: int, stop: int) -> np.ndarray:
    try:
        with sf.SoundFile(_sf_name(path)) as f:
            if start:
                f.seek(start)
            n = -1 if stop < 0 else max(0, stop - start)
            data = f.read(frames=n, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, UnicodeError) as err:
        raise InputError(os_problem(path) or f"cannot decode audio ({_short(err)})", path) from None
    check_finite(data, path)
    return data


def check_finite(data: np.ndarray, path: str | Path) -> None:
    """Raise :class:`InputError` when decoded audio holds NaN or infinite samples.

    Such a file is bad audio, like an unreadable one: every encoder maps it to the same (or a
    non-finite) embedding, so it must never reach a model or a store.
    """
    if data.size and not np.isfinite(data).all():
        n = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"bad audio: {n} of {data.size} samples are NaN or infinite", path)


def load_audio(
    path: str | Path,
    sample_rate: int | None = None,
    start: float | None = None,
    end: float | None = None,
    *,
    start_frame: int | None = None,
    num_frames: int | None = None,
) -> np.ndarray:
    """Decode ``path`` (or a segment of it) to mono float32 at ``sample_rate``.

    The segment is given in seconds (``start``/``end``) or in frames of the file's own rate
    (``start_frame``/``num_frames``); only those frames are decoded.
    """
    sr = None
    if start is not None or end is not None:
        sr = audio_info(path).sample_rate
        start_frame = int(round((start or 0.0) * sr))
        num_frames = -1 if end is None else max(0, int(round(end * sr)) - start_frame)
    first = start_frame or 0
    stop = -1 if num_frames is None or num_frames < 0 else first + num_frames
    data = _read(path, first, stop)
    if data.size == 0:
        raise InputError("empty audio (0 samples)", path)
    x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sample_rate is not None:
        if sr is None:
            sr = audio_info(path).sample_rate
        x = resample(x, sr, sample_rate)
    return np.ascontiguousarray(x, dtype=np.float32)


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling (scipy); a no-op when the rates match."""
    if orig_sr == target_sr:
        return x.astype(np.float32, copy=False)
    from scipy.signal import resample_poly  # here: importing scipy.signal takes ~1 s, most runs never resample

    g = gcd(int(orig_sr), int(target_sr))
    return resample_poly(x, target_sr // g, orig_sr // g).astype(np.float32)


def crop_or_pad(x: np.ndarray, length: int, rng: np.random.Generator | None = None, mode: str = "random") -> np.ndarray:
    """Return exactly ``length`` samples: a crop (random, or from the start) or a wrap-around pad.

    Padding repeats the signal rather than adding silence, the usual choice in speaker recipes,
    so short clips do not turn into mostly-silent crops.
    """
    n = len(x)
    if n == length:
        return x
    if n > length:
        if mode == "random":
            off = int((rng or np.random.default_rng()).integers(0, n - length + 1))
        elif mode == "center":
            off = (n - length) // 2
        else:
            off = 0
        return x[off : off + length]
    if n == 0:
        return np.zeros(length, dtype=np.float32)
    return np.tile(x, -(-length // n))[:length]


def energy_vad(
    x: np.ndarray,
    sample_rate: int,
    *,
    frame_ms: float = 25.0,
    hop_ms: float = 10.0,
    threshold_db: float = -40.0,
    min_keep: float = 0.5,
) -> np.ndarray:
    """Drop low-energy frames (more than ``-threshold_db`` below the loudest frame).

    Keeps the original signal if fewer than ``min_keep`` seconds would survive, so a quiet clip
    never becomes empty.
    """
    win = max(1, int(sample_rate * frame_ms / 1000))
    hop = max(1, int(sample_rate * hop_ms / 1000))
    if len(x) < win:
        return x
    n_frames = 1 + (len(x) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n_frames)[:, None]
    energy = 10 * np.log10(np.mean(x[idx] ** 2, axis=1) + 1e-12)
    keep = energy > energy.max() + threshold_db
    mask = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(keep):
        mask[i * hop : i * hop + win] = True
    if mask.sum() < min_keep * sample_rate:
        return x
    return x[mask]


def write_audio(path: str | Path, x: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio; the format follows the extension (WAV as 16-bit PCM)."""
    p = Path(path)
    subtype = "PCM_16" if p.suffix.lower() in (".wav", ".flac") else None
    sf.write(str(p), np.clip(x, -1.0, 1.0), sample_rate, subtype=subtype)


def speed_change(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``x`` ``factor`` times faster (polyphase resampling, Kaldi/sox ``speed``: duration and
    pitch change together); ``factor == 1`` is a copy."""
    from fractions import Fraction

    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if factor == 1.0 or len(x) == 0:
        return np.array(x, dtype=np.float32)
    from scipy.signal import resample_poly

    frac = Fraction(factor).limit_denominator(1000)
    # Treat x as sampled at sr * factor and resample it to sr: up = q, down = p for factor p/q.
    return resample_poly(x.astype(np.float64), frac.denominator, frac.numerator).astype(np.float32)
