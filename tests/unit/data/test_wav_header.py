"""The Python WAV header parser that prepare uses: the same facts as libsndfile, or None to ask it."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkemb.data.layouts import probe_headers
from spkemb.data.wav_header import wav_facts


@pytest.mark.parametrize(
    ("rate", "channels", "subtype", "frames"),
    [(16000, 1, "PCM_16", 1600), (8000, 2, "PCM_24", 999), (44100, 1, "FLOAT", 441), (16000, 3, "PCM_U8", 17)],
)
def test_facts_match_libsndfile(tmp_path: Path, rate: int, channels: int, subtype: str, frames: int) -> None:
    p = tmp_path / "a.wav"
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (frames, channels)).astype(np.float32)
    sf.write(p, x, rate, subtype=subtype)  # 3 channels: libsndfile writes WAVE_FORMAT_EXTENSIBLE
    info = sf.info(str(p))
    assert wav_facts(str(p)) == (info.samplerate, info.frames, info.channels) == (rate, frames, channels)


def _riff(chunks: list[tuple[bytes, bytes]], declared_data: int | None = None) -> bytes:
    body = b"WAVE"
    for cid, data in chunks:
        n = declared_data if cid == b"data" and declared_data is not None else len(data)
        body += cid + struct.pack("<I", n) + data + (b"\0" if len(data) & 1 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _fmt(tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16) -> bytes:
    block = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)


def test_odd_chunk_before_data_and_truncated_data(tmp_path: Path) -> None:
    p = tmp_path / "b.wav"
    # an odd-sized LIST chunk (padded) before data, and a data chunk that claims more than the file holds
    p.write_bytes(_riff([(b"fmt ", _fmt()), (b"LIST", b"INFOabc"), (b"data", b"\0\1" * 100)], declared_data=4000))
    assert wav_facts(str(p)) == (16000, 100, 1)
    assert sf.info(str(p)).frames == 100


@pytest.mark.parametrize(
    "data",
    [
        b"",  # empty file
        b"fLaC" + b"\0" * 60,  # not RIFF
        _riff([(b"fmt ", _fmt(tag=0x11, bits=4)), (b"data", b"\0" * 64)]),  # IMA ADPCM
        _riff([(b"data", b"\0" * 64), (b"fmt ", _fmt())]),  # data before fmt
        _riff([(b"fmt ", _fmt()), (b"data", b"")]),  # no samples
        _riff([(b"fmt ", _fmt())]),  # no data chunk
    ],
    ids=["empty", "flac", "adpcm", "data-first", "no-samples", "no-data"],
)
def test_anything_unusual_is_left_to_libsndfile(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "c.wav"
    p.write_bytes(data)
    assert wav_facts(str(p)) is None


def test_probe_headers_keeps_order_problems_and_min_duration(tmp_path: Path) -> None:
    paths = []
    for i in range(150):  # more than one batch per thread
        p = tmp_path / f"{i:03d}.wav"
        if i == 70:
            p.write_bytes(b"")
        else:
            sf.write(p, np.zeros(160 * (i + 1), np.float32), 16000)
        paths.append(str(p))
    got = probe_headers(paths, min_duration=0.05, workers=3)
    assert got[70] == "empty file (0 bytes)"
    assert got[3].startswith("too short (0.040 s")
    assert got[4] == (16000, 0.05)
    assert got[149] == (16000, 1.5)
    assert sum(isinstance(g, tuple) for g in got) == 150 - 1 - 4
