"""The way in from Python: examples/python_api.py runs (CI keeps it true), and spkemb.embed /
spkemb.verify agree with what the commands compute."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import spkemb
from spkemb.audio import load_audio, resample
from spkemb.data.synthetic import make_corpus
from spkemb.errors import InputError

ROOT = Path(__file__).parents[2]


def test_the_python_example_runs(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("python_api", ROOT / "examples" / "python_api.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(tmp_path)
    assert out == {"steps": 3, "dim": 16, "rows": 12, "clusters": 3}
    assert (tmp_path / "exp" / "encoder.pt").is_file() and (tmp_path / "exp" / "metrics.jsonl").is_file()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_corpus(tmp_path_factory.mktemp("audio"), n_speakers=2, utts_per_speaker=2, seconds=(1.0, 1.2))


def test_embed_takes_a_file_or_its_waveform_and_verify_scores_cosine(files: list[Path]) -> None:
    enc = spkemb.load_encoder("mfcc-stats")
    wave = load_audio(files[0], 16000)
    from_file = spkemb.embed(enc, files[0])
    assert from_file.dtype == np.float32 and from_file.shape == (enc.embed_dim,)
    np.testing.assert_allclose(spkemb.embed(enc, wave), from_file, atol=1e-6)
    np.testing.assert_allclose(spkemb.embed(enc, torch.from_numpy(wave)), from_file, atol=1e-6)
    at_8k = load_audio(files[0], 8000)  # a waveform at another rate is resampled to the encoder's
    np.testing.assert_allclose(
        spkemb.embed(enc, at_8k, sample_rate=8000), spkemb.embed(enc, resample(at_8k, 8000, 16000)), atol=1e-6
    )
    assert not np.allclose(spkemb.embed(enc, at_8k), spkemb.embed(enc, resample(at_8k, 8000, 16000)))
    other = spkemb.embed(enc, files[2])
    cos = float(from_file @ other / np.linalg.norm(from_file) / np.linalg.norm(other))
    assert spkemb.verify(enc, files[0], files[2]) == pytest.approx(cos, abs=1e-5)
    assert spkemb.verify(enc, files[0], files[0]) == pytest.approx(1.0, abs=1e-5)


def test_embed_refuses_what_is_not_mono_audio(files: list[Path], tmp_path: Path) -> None:
    enc = spkemb.load_encoder("mfcc-stats")
    with pytest.raises(InputError, match="1-D"):
        spkemb.embed(enc, np.zeros((2, 16000), dtype=np.float32))
    with pytest.raises(InputError, match="NaN"):
        spkemb.embed(enc, np.full(16000, np.nan, dtype=np.float32))
    with pytest.raises(InputError):
        spkemb.embed(enc, tmp_path / "missing.wav")


def test_import_spkemb_stays_cheap() -> None:
    code = "import sys, spkemb; print(spkemb.__version__, 'torch' in sys.modules, callable(spkemb.embed))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1:] == ["False", "True"]
