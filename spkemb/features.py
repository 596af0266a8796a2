"""Acoustic features as ``nn.Module`` s that run on the training/extraction device.

Both modules take a padded batch of waveforms ``wav`` (B, S) and the number of valid samples of
each row ``lengths`` (B,) (or ``None`` when every row is full) and return ``(feats, frame_lengths)``
with ``feats`` of shape (B, T, D). Framing follows Kaldi's "snip edges" convention: frame ``t``
covers samples ``[t*hop, t*hop + win)``, so an utterance of ``n`` samples has
``1 + (n - win) // hop`` frames and a valid frame never looks at padding. Features of a padded
batch therefore equal those of each utterance on its own; frames past an utterance's end are 0.

The features are always computed in float32, even inside an autocast region.
"""

from __future__ import annotations

import warnings

import torch
import torchaudio
from torch import Tensor, nn

__all__ = ["Fbank", "MFCC", "frame_count", "frame_mask"]

LOG_FLOOR = 1e-6


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def frame_count(num_samples: Tensor | int, win: int, hop: int) -> Tensor | int:
    """Frames of a signal of ``num_samples`` samples (at least 1, even for a very short one)."""
    if isinstance(num_samples, Tensor):
        return (torch.div(num_samples - win, hop, rounding_mode="floor") + 1).clamp(min=1).long()
    return max(1, 1 + (int(num_samples) - win) // hop)


def frame_mask(frame_lengths: Tensor, num_frames: int) -> Tensor:
    """Boolean (B, T) mask that is True on the valid frames."""
    return torch.arange(num_frames, device=frame_lengths.device)[None, :] < frame_lengths[:, None]


class Fbank(nn.Module):
    """Log mel filterbank energies with utterance mean normalisation over the valid frames.

    ``n_fft`` is the next power of two at or above the window; ``f_max`` defaults to (and is capped
    at) the Nyquist frequency, so the same settings work at 8 kHz. ``preemphasis`` (e.g. 0.97) is
    off by default.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        f_min: float = 20.0,
        f_max: float | None = None,
        mean_norm: bool = True,
        preemphasis: float = 0.0,
    ) -> None:
        super().__init__()
        self.sample_rate = int(sample_rate)
        self.n_mels = int(n_mels)
        self.win = max(1, int(round(self.sample_rate * win_ms / 1000.0)))
        self.hop = max(1, int(round(self.sample_rate * hop_ms / 1000.0)))
        self.n_fft = _next_pow2(self.win)
        nyquist = self.sample_rate / 2.0
        self.f_min = float(f_min)
        self.f_max = nyquist if f_max is None else min(float(f_max), nyquist)
        if not 0.0 <= self.f_min < self.f_max:
            raise ValueError(f"need 0 <= f_min < f_max, got f_min={f_min}, f_max={self.f_max}")
        self.mean_norm = bool(mean_norm)
        self.preemphasis = float(preemphasis)
        # torch.stft centres a short window inside n_fft; padding the signal by the same amount on
        # both sides (with center=False) puts frame t's window exactly on [t*hop, t*hop + win).
        self._side = (self.n_fft - self.win) // 2
        self._extra = self.n_fft - self.win - self._side
        with warnings.catch_warnings():
            # Many mel bands over few FFT bins (e.g. 80 mels at 8 kHz) leave a few empty low bands;
            # they are harmless (constant, then 0 after mean normalisation).
            warnings.filterwarnings("ignore", message=".*filterbank has all zero values.*")
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=self.sample_rate,
                n_fft=self.n_fft,
                win_length=self.win,
                hop_length=self.hop,
                f_min=self.f_min,
                f_max=self.f_max,
                n_mels=self.n_mels,
                window_fn=torch.hamming_window,
                power=2.0,
                center=False,
                norm=None,
                mel_scale="htk",
            )
        self.mel.spectrogram = _PowerSpectrogram(
            n_fft=self.n_fft,
            win_length=self.win,
            hop_length=self.hop,
            window_fn=torch.hamming_window,
            power=2.0,
            center=False,
        )

    @property
    def out_dim(self) -> int:
        return self.n_mels

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        return torch.as_tensor(frame_count(lengths, self.win, self.hop))

    def log_mel(self, wav: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(B, T, n_mels) log mel energies (not normalised, padding not zeroed) and frame lengths."""
        if wav.dim() == 1:
            wav = wav[None]
        if wav.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(wav.shape)}")
        wav = wav.float()
        if self.preemphasis:
            wav = torch.cat([wav[:, :1], wav[:, 1:] - self.preemphasis * wav[:, :-1]], dim=1)
        short = max(0, self.win - wav.shape[1])
        wav = nn.functional.pad(wav, (self._side, self._extra + short))
        spec = self.mel(wav)  # (B, n_mels, T)
        feats = torch.log(spec.clamp_min_(LOG_FLOOR)).transpose(1, 2)
        frames = None if lengths is None else self.frame_lengths(lengths.to(feats.device))
        return feats, frames

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.autocast(device_type=wav.device.type, enabled=False):
            feats, frames = self.log_mel(wav, lengths)
            return _normalise(feats, frames, self.mean_norm)


class _PowerSpectrogram(torchaudio.transforms.Spectrogram):
    """torchaudio's power spectrogram (no centring, no padding, one-sided, power 2) as re^2 + im^2 of
    the STFT: the same numbers to float32 rounding (relative 3e-7), without the square root that
    |X|^2 takes through |X| (half the fbank's time on the CPU). Same buffers as its parent, so saved
    encoders load unchanged, and the ONNX export replaces it like its parent."""

    def forward(self, waveform: Tensor) -> Tensor:
        shape = waveform.shape
        spec = torch.stft(
            waveform.reshape(-1, shape[-1]),
            self.n_fft,
            self.hop_length,
            self.win_length,
            self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        ri = torch.view_as_real(spec)
        power = ri[..., 0].square() + ri[..., 1].square()
        return power.reshape(shape[:-1] + power.shape[-2:])


def _normalise(feats: Tensor, frames: Tensor | None, mean_norm: bool) -> tuple[Tensor, Tensor]:
    """Subtract each utterance's mean over its valid frames; zero the frames past its end."""
    B, T, _ = feats.shape
    if frames is None:
        frames = torch.full((B,), T, dtype=torch.long, device=feats.device)
        if mean_norm:
            feats = feats - feats.mean(dim=1, keepdim=True)
        return feats.contiguous(), frames
    frames = frames.clamp(max=T)
    mask = frame_mask(frames, T).unsqueeze(-1).to(feats.dtype)  # (B, T, 1)
    if mean_norm:
        mean = (feats * mask).sum(dim=1, keepdim=True) / frames.clamp(min=1).view(B, 1, 1).to(feats.dtype)
        feats = feats - mean
    return (feats * mask).contiguous(), frames


class MFCC(nn.Module):
    """MFCCs: DCT-II (orthonormal) of the log mel energies, then the same normalisation as Fbank."""

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mfcc: int = 30,
        n_mels: int = 40,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        f_min: float = 20.0,
        f_max: float | None = None,
        mean_norm: bool = True,
        preemphasis: float = 0.97,
    ) -> None:
        super().__init__()
        if n_mfcc > n_mels:
            raise ValueError(f"n_mfcc ({n_mfcc}) cannot exceed n_mels ({n_mels})")
        self.fbank = Fbank(sample_rate, n_mels, win_ms, hop_ms, f_min, f_max, mean_norm=False, preemphasis=preemphasis)
        self.sample_rate = self.fbank.sample_rate
        self.n_mfcc = int(n_mfcc)
        self.mean_norm = bool(mean_norm)
        dct = torchaudio.functional.create_dct(self.n_mfcc, n_mels, norm="ortho")  # (n_mels, n_mfcc)
        self.register_buffer("dct", dct, persistent=False)

    @property
    def out_dim(self) -> int:
        return self.n_mfcc

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.autocast(device_type=wav.device.type, enabled=False):
            logmel, frames = self.fbank.log_mel(wav, lengths)
            dct: Tensor = self.dct  # type: ignore[assignment]  # a registered buffer
            return _normalise(logmel @ dct, frames, self.mean_norm)
