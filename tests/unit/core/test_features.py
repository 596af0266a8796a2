import math

import pytest
import torch

from spkemb.features import MFCC, Fbank


def _tone_noise(n: int, sr: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / sr
    return 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(n, generator=g)


@pytest.mark.parametrize("sr", [16000, 8000])
def test_fbank_shape_and_frame_counts(sr):
    fb = Fbank(sample_rate=sr)
    win, hop = sr * 25 // 1000, sr * 10 // 1000
    assert fb.win == win and fb.hop == hop
    assert fb.n_fft == (512 if sr == 16000 else 256)
    assert fb.f_max == sr / 2
    n = [sr, sr // 2 + 37, win, 10]
    wav = torch.zeros(4, sr)
    for i, k in enumerate(n):
        wav[i, :k] = _tone_noise(k, sr, i)
    feats, frames = fb(wav, torch.tensor(n))
    assert feats.shape == (4, 1 + (sr - win) // hop, 80)
    assert feats.dtype == torch.float32
    expected = [1 + (k - win) // hop if k >= win else 1 for k in n]
    assert frames.tolist() == expected
    assert torch.isfinite(feats).all()
    # No lengths: every row is full.
    feats2, frames2 = fb(wav[:1])
    assert frames2.tolist() == [feats.shape[1]]


def test_fbank_8k_with_f_max_above_nyquist_is_capped():
    fb = Fbank(sample_rate=8000, n_mels=40, f_max=7600.0)
    assert fb.f_max == 4000.0
    feats, _ = fb(torch.randn(1, 4000))
    assert feats.shape[-1] == 40


def test_mean_norm_valid_frames_zero_mean_and_padding_zero():
    fb = Fbank()
    wav = torch.stack([_tone_noise(16000, 16000, 1), torch.cat([_tone_noise(8000, 16000, 2), torch.zeros(8000)])])
    feats, frames = fb(wav, torch.tensor([16000, 8000]))
    for i in range(2):
        valid = feats[i, : frames[i]]
        assert valid.mean(0).abs().max() < 1e-4
        assert valid.abs().max() > 0.1
        assert (feats[i, frames[i] :] == 0).all()
    # Without mean normalisation the padding is still zero.
    raw, frames = Fbank(mean_norm=False)(wav, torch.tensor([16000, 8000]))
    assert (raw[1, frames[1] :] == 0).all()
    assert raw[1, : frames[1]].mean(0).abs().max() > 1.0


def test_padded_batch_equals_single_utterance():
    fb = Fbank(preemphasis=0.97)
    lens = [16000, 9123, 3000]
    singles = [_tone_noise(k, 16000, i) for i, k in enumerate(lens)]
    wav = torch.zeros(3, max(lens))
    for i, x in enumerate(singles):
        wav[i, : len(x)] = x
    feats, frames = fb(wav, torch.tensor(lens))
    for i, x in enumerate(singles):
        one, n = fb(x[None])
        assert n.item() == frames[i].item()
        torch.testing.assert_close(feats[i, : n.item()], one[0], atol=1e-4, rtol=1e-4)


def test_fbank_is_float32_under_autocast():
    fb = Fbank()
    wav = _tone_noise(8000, 16000)[None]
    ref, _ = fb(wav)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, _ = fb(wav)
        half, _ = fb(wav.bfloat16())
    assert feats.dtype == torch.float32 and half.dtype == torch.float32
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)


def test_mfcc_contract():
    mf = MFCC(sample_rate=8000)
    wav = torch.zeros(2, 8000)
    wav[0] = _tone_noise(8000, 8000)
    wav[1, :4000] = _tone_noise(4000, 8000, 3)
    feats, frames = mf(wav, torch.tensor([8000, 4000]))
    assert feats.shape == (2, 98, 30)
    assert frames.tolist() == [98, 48]
    assert (feats[1, 48:] == 0).all()
    assert feats[1, :48].mean(0).abs().max() < 1e-4
    one, _ = mf(wav[1:, :4000])
    torch.testing.assert_close(feats[1, :48], one[0], atol=1e-4, rtol=1e-4)


def test_fbank_power_spectrogram_equals_torchaudios() -> None:
    """Fbank's re^2 + im^2 power spectrogram gives torchaudio's |X|^2 (to float32 rounding), on a batch
    and on one signal, so features (and every saved encoder) are unchanged by the faster path."""
    import torchaudio

    fb = Fbank()
    ref = torchaudio.transforms.Spectrogram(
        n_fft=fb.n_fft, win_length=fb.win, hop_length=fb.hop, window_fn=torch.hamming_window, power=2.0, center=False
    )
    torch.manual_seed(0)
    for x in (torch.randn(3, 16000), torch.randn(5000)):
        got, want = fb.mel.spectrogram(x), ref(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
