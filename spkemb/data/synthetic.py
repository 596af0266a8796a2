"""A seeded synthetic multi-speaker corpus for the demo and the tests.

Each speaker has a fundamental frequency, a vocal-tract length factor that scales a vowel formant
table, a breathiness and a speaking rate; each utterance strings random vowel-like syllables
(glottal pulse train through formant resonators) with pauses. It is not speech, but it carries
speaker identity in the same places real speech does (pitch and formants), so a speaker encoder
can learn it and a baseline can score it. Layout: ``ROOT/<spk>/<session>/<utt>.wav`` (VoxCeleb).

:func:`make_noise` writes a folder of background noise for augmentation (``--noise DIR``): babble of
other synthetic talkers, and coloured noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from spkemb.audio import write_audio

# (F1, F2, F3) in Hz of a few vowels for an adult male vocal tract.
_VOWELS = np.array(
    [
        [730, 1090, 2440],
        [270, 2290, 3010],
        [300, 870, 2240],
        [530, 1840, 2480],
        [660, 1720, 2410],
        [490, 1350, 1690],
        [640, 1190, 2390],
        [440, 1020, 2240],
    ]
)


@dataclass(frozen=True, eq=False)
class SyntheticSpeaker:
    name: str
    f0: float
    tract: float
    breath: float
    rate: float
    vowels: np.ndarray  # this speaker's own formant targets (idiosyncratic, like real vowel spaces)
    bandwidth: float  # formant bandwidth scale
    tilt: float  # glottal source low-pass coefficient (voice quality)


def make_speakers(n: int, seed: int = 0) -> list[SyntheticSpeaker]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        female = rng.random() < 0.5
        out.append(
            SyntheticSpeaker(
                name=f"spk{i:03d}",
                f0=float(rng.uniform(170, 260) if female else rng.uniform(85, 150)),
                tract=float(rng.uniform(1.05, 1.25) if female else rng.uniform(0.85, 1.05)),
                breath=float(rng.uniform(0.01, 0.08)),
                rate=float(rng.uniform(3.0, 6.0)),
                vowels=_VOWELS * rng.uniform(0.88, 1.12, _VOWELS.shape),
                bandwidth=float(rng.uniform(0.6, 1.6)),
                tilt=float(rng.uniform(0.2, 0.9)),
            )
        )
    return out


def _resonator(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    r = np.exp(-np.pi * bw / sr)
    theta = 2 * np.pi * freq / sr
    a = [1.0, -2 * r * np.cos(theta), r * r]
    return lfilter([1 - r], a, x)


def synthesize(spk: SyntheticSpeaker, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One utterance of ``seconds`` for ``spk``."""
    n = int(seconds * sr)
    out = np.zeros(n, dtype=np.float64)
    pos = int(rng.uniform(0.05, 0.2) * sr)
    while pos < n:
        syl = int(sr / spk.rate * rng.uniform(0.6, 1.4))
        seg_n = min(syl, n - pos)
        if seg_n < sr // 50:
            break
        # Glottal source: pulse train with jittered, gently gliding pitch.
        f0 = spk.f0 * rng.uniform(0.9, 1.1) * np.linspace(1.0, rng.uniform(0.9, 1.1), seg_n)
        phase = np.cumsum(f0 / sr)
        src = np.diff(np.floor(phase), prepend=0.0) * 1.0
        src = lfilter([1 - spk.tilt], [1, -spk.tilt], src)
        src += spk.breath * rng.standard_normal(seg_n)
        formants = spk.vowels[rng.integers(len(spk.vowels))] * spk.tract * rng.uniform(0.97, 1.03, 3)
        seg = np.zeros(seg_n)
        for k, f in enumerate(formants):
            if f < sr / 2 - 200:
                seg += _resonator(src, f, (60 + 40 * k) * spk.bandwidth, sr) / (k + 1)
        seg *= np.hanning(seg_n)
        out[pos : pos + seg_n] += seg
        pos += seg_n + int(rng.uniform(0.0, 0.25) * sr * (rng.random() < 0.3))
    out += 0.002 * rng.standard_normal(n)
    peak = np.abs(out).max() or 1.0
    return (0.5 * out / peak).astype(np.float32)


def make_corpus(
    root: str | Path,
    n_speakers: int = 20,
    utts_per_speaker: int = 8,
    seconds: tuple[float, float] = (2.0, 4.0),
    sample_rate: int = 16000,
    seed: int = 0,
) -> list[Path]:
    """Write a VoxCeleb-layout corpus under ``root``; returns the written files."""
    root = Path(root)
    rng = np.random.default_rng(seed + 1)
    files = []
    for spk in make_speakers(n_speakers, seed):
        for j in range(utts_per_speaker):
            path = root / spk.name / f"sess{j % 2}" / f"{j:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_audio(path, synthesize(spk, float(rng.uniform(*seconds)), sample_rate, rng), sample_rate)
            files.append(path)
    return files


def make_noise(
    root: str | Path, n_files: int = 12, seconds: float = 6.0, sample_rate: int = 16000, seed: int = 0
) -> list[Path]:
    """Write ``n_files`` noise files under ``root``: alternately babble (3-6 talkers who are not in
    any corpus made with the same seed) and coloured noise (1/f^a spectrum, a in 0..2)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 2)
    talkers = make_speakers(16, seed + 1000)
    n = int(seconds * sample_rate)
    files = []
    for i in range(n_files):
        if i % 2 == 0:
            picks = rng.choice(len(talkers), size=int(rng.integers(3, 7)), replace=False)
            y = sum(synthesize(talkers[k], seconds, sample_rate, rng).astype(np.float64) for k in picks)
            kind = "babble"
        else:
            spec = np.fft.rfft(rng.standard_normal(n))
            f = np.maximum(np.fft.rfftfreq(n, 1 / sample_rate), 20.0)
            y = np.fft.irfft(spec / f ** (rng.uniform(0.0, 2.0) / 2), n)
            kind = "colour"
        peak = np.abs(y).max() or 1.0
        path = root / f"{kind}{i:03d}.wav"
        write_audio(path, np.asarray(0.5 * y / peak, dtype=np.float32), sample_rate)
        files.append(path)
    return files


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m spkemb.data.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--speakers", type=int, default=20)
    ap.add_argument("--utts", type=int, default=8, help="utterances per speaker")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--max-seconds", type=float, default=4.0)
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=int, metavar="N", help="write N background-noise files to ROOT instead")
    a = ap.parse_args(argv)
    if a.noise is not None:
        files = make_noise(a.root, a.noise, a.max_seconds, a.sample_rate, a.seed)
        print(f"wrote {len(files)} noise files under {a.root}")
        return
    files = make_corpus(a.root, a.speakers, a.utts, (a.min_seconds, a.max_seconds), a.sample_rate, a.seed)
    print(f"wrote {len(files)} files of {a.speakers} speakers under {a.root}")


if __name__ == "__main__":
    main()
