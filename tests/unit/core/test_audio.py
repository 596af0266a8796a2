from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkemb.audio import audio_info, crop_or_pad, energy_vad, load_audio, resample
from spkemb.errors import InputError


def _tone(sr: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_info_reads_header(tmp_path: Path) -> None:
    p = tmp_path / "a.flac"
    sf.write(p, _tone(16000, 1.5), 16000)
    info = audio_info(p)
    assert (info.sample_rate, info.frames, info.channels) == (16000, 24000, 1)
    assert info.duration == pytest.approx(1.5)


def test_stereo_44k_is_downmixed_and_resampled(tmp_path: Path) -> None:
    left, right = _tone(44100, 1.0, 300), _tone(44100, 1.0, 300) * 0.5
    p = tmp_path / "st.wav"
    sf.write(p, np.stack([left, right], 1), 44100, subtype="FLOAT")
    x = load_audio(p, 16000)
    assert x.ndim == 1 and x.dtype == np.float32
    assert len(x) == 16000
    # Downmix is the channel mean: amplitude 0.375 for a 0.5 and a 0.25 sine in phase.
    assert np.abs(x[1000:-1000]).max() == pytest.approx(0.375, rel=0.02)


def test_8k_input_resamples_to_16k(tmp_path: Path) -> None:
    p = tmp_path / "n.wav"
    sf.write(p, _tone(8000, 2.0, 500), 8000)
    x = load_audio(p, 16000)
    assert len(x) == 32000
    spec = np.abs(np.fft.rfft(x))
    assert np.argmax(spec) * 16000 / len(x) == pytest.approx(500, abs=2)


def test_segment_reads_only_that_part(tmp_path: Path) -> None:
    ramp = np.linspace(-0.9, 0.9, 16000, dtype=np.float32)
    p = tmp_path / "r.wav"
    sf.write(p, ramp, 16000, subtype="FLOAT")
    x = load_audio(p, start_frame=4000, num_frames=100)
    np.testing.assert_allclose(x, ramp[4000:4100])
    y = load_audio(p, start=0.5, end=0.75)
    np.testing.assert_allclose(y, ramp[8000:12000])


@pytest.mark.parametrize("content", [b"", b"RIFF1234WAVEjunkjunkjunk", b"\x00" * 100])
def test_bad_files_raise_input_error(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(InputError, match="bad.wav"):
        audio_info(p)


def test_zero_frame_wav_is_empty(tmp_path: Path) -> None:
    p = tmp_path / "z.wav"
    sf.write(p, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(InputError, match="empty"):
        audio_info(p)


def test_crop_or_pad() -> None:
    x = np.arange(10, dtype=np.float32)
    assert list(crop_or_pad(x, 4, mode="start")) == [0, 1, 2, 3]
    assert list(crop_or_pad(x, 15)) == list(range(10)) + [0, 1, 2, 3, 4]
    c = crop_or_pad(x, 4, np.random.default_rng(0))
    assert len(c) == 4 and np.all(np.diff(c) == 1)


def test_energy_vad_drops_silence() -> None:
    sr = 16000
    x = np.concatenate([np.zeros(sr), _tone(sr, 1.0), np.zeros(sr)]).astype(np.float32)
    y = energy_vad(x, sr)
    assert 0.95 * sr < len(y) < 1.1 * sr


def test_resample_noop() -> None:
    x = _tone(16000, 0.1)
    assert resample(x, 16000, 16000) is x or np.array_equal(resample(x, 16000, 16000), x)


def test_synthetic_noise_folder_is_seeded_and_usable_as_noise(tmp_path: Path) -> None:
    from spkemb.augment.noise import NoiseBank
    from spkemb.data.synthetic import make_noise

    a = make_noise(tmp_path / "a", n_files=4, seconds=1.0, seed=3)
    b = make_noise(tmp_path / "b", n_files=4, seconds=1.0, seed=3)
    assert [p.name for p in a] == ["babble000.wav", "colour001.wav", "babble002.wav", "colour003.wav"]
    for pa, pb in zip(a, b, strict=True):
        ya = load_audio(pa)
        assert audio_info(pa).sample_rate == 16000 and len(ya) == 16000 and np.isfinite(ya).all()
        assert 0.45 < np.abs(ya).max() <= 0.5 and ya.std() > 0.01  # not silent, peak-normalised
        assert np.array_equal(ya, load_audio(pb))
    assert sorted(NoiseBank(tmp_path / "a").files["noise"]) == sorted(str(p) for p in a)
