"""spkemb.augment (noise, reverb, speed, gain, SpecAugment, chain) and `spkemb augment`."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from spkemb.augment import (
    AddNoise,
    Augmenter,
    AugmentWarning,
    NoiseBank,
    RandomGain,
    Reverb,
    SpecAugment,
    SpeedPerturb,
    apply_rir,
    from_options,
)
from spkemb.cli.app import app
from spkemb.data.manifest import Utterance, read_manifest, write_manifest
from spkemb.errors import InputError

SR = 16000


def _write(path: Path, x: np.ndarray, sr: int = SR, subtype: str = "FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(x, dtype=np.float32), sr, subtype=subtype)
    return path


def _speech_like(n: int, seed: int) -> np.ndarray:
    """A noisy harmonic tone with a syllable-rate envelope (stands in for speech)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = 100 + 60 * rng.random()
    x = sum(np.sin(2 * np.pi * f0 * h * t + rng.random() * 6) / h for h in range(1, 6))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.random() * 6) ** 2
    return (0.2 * x * env + 0.01 * rng.standard_normal(n)).astype(np.float32)


def _snr(x: np.ndarray, y: np.ndarray) -> float:
    n = y.astype(np.float64) - x.astype(np.float64)
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(n**2))


@pytest.fixture(scope="module")
def musan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MUSAN-shaped root: 2 noises, 2 music files (one 22.05 kHz, one short), 8 speech files."""
    root = tmp_path_factory.mktemp("musan")
    rng = np.random.default_rng(1)
    _write(root / "noise" / "free-sound" / "n0.wav", 0.1 * rng.standard_normal(SR * 2))
    _write(root / "noise" / "n1.flac", 0.05 * rng.standard_normal(SR), subtype="PCM_16")
    t = np.arange(int(22050 * 1.5)) / 22050
    _write(root / "music" / "m0.wav", 0.3 * np.sin(2 * np.pi * 440 * t), sr=22050)
    _write(root / "music" / "m1.wav", 0.3 * np.sin(2 * np.pi * 330 * np.arange(2000) / SR))  # shorter than x
    for i in range(8):
        _write(root / "speech" / f"s{i}.wav", _speech_like(SR, 10 + i))
    (root / "README").write_text("not audio\n")
    return root


@pytest.fixture
def x() -> np.ndarray:
    return _speech_like(SR, 0)


# -- noise ---------------------------------------------------------------------------------------


def test_noise_bank_layouts(musan: Path, tmp_path: Path) -> None:
    bank = NoiseBank(musan)
    assert bank.categories == ["noise", "music", "babble"]
    assert [len(bank.files[c]) for c in ("noise", "music", "babble")] == [2, 2, 8]
    plain = NoiseBank([musan / "noise"])
    assert plain.categories == ["noise"] and len(plain) == 2
    assert NoiseBank(musan / "music").categories == ["music"]  # a folder named music is music
    with pytest.raises(InputError, match="no such noise folder"):
        NoiseBank(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no audio files"):
        NoiseBank(tmp_path / "empty")


@pytest.mark.parametrize("category", ["noise", "music", "babble"])
def test_add_noise_hits_drawn_snr(musan: Path, x: np.ndarray, category: str) -> None:
    add = AddNoise(NoiseBank(musan), categories=[category])
    lo, hi = {"noise": (0, 15), "music": (5, 15), "babble": (13, 20)}[category]
    for seed in range(4):
        y, rec = add(x, SR, np.random.default_rng(seed))
        assert rec is not None and rec["category"] == category
        assert lo <= rec["snr"] <= hi
        assert y.dtype == np.float32 and len(y) == len(x)
        assert abs(_snr(x, y) - rec["snr"]) < 0.5


def test_noise_reads_segment_and_loops_short_files(musan: Path) -> None:
    bank = NoiseBank(musan)
    rng = np.random.default_rng(0)
    short = str(musan / "music" / "m1.wav")  # 2000 samples, looped to 5000
    seg = bank.read_segment(short, 5000, SR, rng)
    assert len(seg) == 5000
    np.testing.assert_allclose(seg[:2000], seg[2000:4000], atol=1e-6)
    seg = bank.read_segment(str(musan / "music" / "m0.wav"), 8000, SR, rng)  # resampled 22.05k -> 16k
    assert len(seg) == 8000 and np.all(np.isfinite(seg))


def test_babble_sums_3_to_7_talkers(musan: Path, x: np.ndarray) -> None:
    add = AddNoise(NoiseBank(musan), categories=["babble"])
    counts = set()
    for seed in range(30):
        _, rec = add(x, SR, np.random.default_rng(seed))
        assert 3 <= rec["talkers"] <= 7
        assert len(rec["files"]) == rec["talkers"] == len(set(rec["files"]))  # distinct talkers
        counts.add(rec["talkers"])
    assert len(counts) >= 3


def test_corrupt_and_empty_noise_files_are_skipped_with_one_warning(tmp_path: Path, x: np.ndarray) -> None:
    d = tmp_path / "noise"
    d.mkdir()
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    _write(d / "empty.wav", np.zeros(0))
    add = AddNoise(NoiseBank(d))
    with pytest.warns(AugmentWarning) as caught:
        for seed in range(5):
            y, rec = add(x, SR, np.random.default_rng(seed))
            assert rec is None and np.array_equal(y, x)  # nothing usable: input passes through
    assert len(caught) == 2  # one warning per bad file, not one per call
    _write(d / "good.wav", 0.1 * np.random.default_rng(0).standard_normal(SR))
    add = AddNoise(NoiseBank(d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AugmentWarning)
        for seed in range(6):
            y, rec = add(x, SR, np.random.default_rng(seed))
            assert rec is not None and rec["file"].endswith("good.wav")


# -- reverb --------------------------------------------------------------------------------------


def _lag(x: np.ndarray, y: np.ndarray) -> int:
    from scipy.signal import fftconvolve

    xc = fftconvolve(y.astype(np.float64), x[::-1].astype(np.float64))
    return int(np.argmax(np.abs(xc))) - (len(x) - 1)


def test_reverb_with_delta_rir_is_identity(tmp_path: Path, x: np.ndarray) -> None:
    delta = np.zeros(800, dtype=np.float32)
    delta[123] = 0.5  # delayed and attenuated: alignment and power preservation undo both
    _write(tmp_path / "rirs" / "room1" / "delta.wav", delta)
    rev = Reverb(tmp_path / "rirs", SR)
    y, rec = rev(x, SR, np.random.default_rng(0))
    assert rec["rir"].endswith("delta.wav")
    np.testing.assert_allclose(y, x, atol=1e-5)
    with pytest.raises(InputError):
        Reverb(tmp_path / "nope", SR)


def test_simulated_reverb_keeps_length_power_and_alignment(x: np.ndarray) -> None:
    rev = Reverb("simulate", SR, pool_size=2, rt60=(0.2, 0.4))
    noise = np.random.default_rng(3).standard_normal(SR).astype(np.float32) * 0.1
    for sig in (x, noise):
        y, rec = rev(sig, SR, np.random.default_rng(1))
        assert rec["rir"].startswith("sim:") and 0.2 <= rec["rt60"] <= 0.4
        assert len(y) == len(sig) and y.dtype == np.float32
        assert 0.9 < np.mean(y.astype(np.float64) ** 2) / np.mean(sig.astype(np.float64) ** 2) < 1.1
        assert not np.allclose(y, sig, atol=1e-3)
    assert _lag(noise, y) == 0
    y2, rec2 = rev(noise, SR, np.random.default_rng(1))  # the pool entry is reused, same result
    assert rec2 == rec and np.array_equal(y, y2)


def test_apply_rir_peak_alignment() -> None:
    x = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    rir = np.zeros(300)
    rir[50], rir[51], rir[200] = 1.0, 0.3, 0.2
    assert _lag(x, apply_rir(x, rir)) == 0


# -- speed, gain, SpecAugment --------------------------------------------------------------------


def test_speed_perturb_changes_length(x: np.ndarray) -> None:
    sp = SpeedPerturb(factors=(1.1,))
    y, rec = sp(x, SR, np.random.default_rng(0))
    assert rec == {"factor": 1.1}
    assert abs(len(y) - len(x) / 1.1) <= 1 and y.dtype == np.float32
    y, rec = SpeedPerturb((0.9,))(x, SR, np.random.default_rng(0))
    assert abs(len(y) - len(x) / 0.9) <= 1
    seen = {SpeedPerturb()(x[:1000], SR, np.random.default_rng(s))[1]["factor"] for s in range(20)}
    assert seen == {0.9, 1.0, 1.1}


def test_random_gain(x: np.ndarray) -> None:
    y, rec = RandomGain(-6, 6)(x, SR, np.random.default_rng(0))
    assert -6 <= rec["gain_db"] <= 6
    ratio_db = 20 * np.log10(np.max(np.abs(y)) / np.max(np.abs(x)))
    assert abs(ratio_db - rec["gain_db"]) < 1e-2


def test_specaugment_masks_bands_in_train_mode_only() -> None:
    torch.manual_seed(0)
    feats = torch.ones(8, 50, 40)
    sa = SpecAugment(freq_masks=2, freq_width=8, time_masks=2, time_width=10).train()
    out = sa(feats)
    assert out.shape == feats.shape
    zero = out == 0
    assert zero.any()
    for b in range(8):
        cols = zero[b].all(dim=0)  # masked frequency bins (whole column over time)
        rows = zero[b].all(dim=1)  # masked frames
        # every zero lies in a masked band; nothing else was touched
        assert torch.equal(zero[b], cols[None, :] | rows[:, None])
        assert cols.sum() <= 2 * 8 and rows.sum() <= 2 * 10
    only_freq = SpecAugment(freq_masks=1, freq_width=5, time_masks=0).train()(torch.ones(16, 20, 30))
    for b in range(16):
        idx = torch.nonzero((only_freq[b] == 0).all(dim=0)).flatten()
        assert len(idx) <= 5
        if len(idx):
            assert idx.max() - idx.min() + 1 == len(idx)  # one contiguous band
    sa.eval()
    assert torch.equal(sa(feats), feats)


# -- the chain -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rir_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rirs")
    rng = np.random.default_rng(5)
    for i in range(3):
        rir = np.zeros(2000)
        rir[10 + i] = 1.0
        rir[20:] = 0.05 * rng.standard_normal(1980) * np.exp(-np.arange(1980) / 300)
        _write(d / f"r{i}.wav", rir)
    return d


def test_chain_is_deterministic_given_rng(musan: Path, rir_dir: Path, x: np.ndarray) -> None:
    aug = from_options([str(musan)], str(rir_dir), speed=True, gain=True, sample_rate=SR, p_noise=1, p_reverb=1)
    assert [s.name for s in aug.steps] == ["speed", "reverb", "noise", "gain"]
    y1, r1 = aug(x, SR, np.random.default_rng(7))
    y2, r2 = aug(x, SR, np.random.default_rng(7))
    y3, r3 = aug(x, SR, np.random.default_rng(8))
    assert np.array_equal(y1, y2) and r1 == r2
    assert r1 != r3 or not np.array_equal(y1, y3)
    assert set(r1) >= {"speed", "reverb", "noise", "gain"}
    assert y1.dtype == np.float32 and np.max(np.abs(y1)) <= 1.0
    assert abs(len(y1) - len(x) / r1["speed"]["factor"]) <= 1
    json.dumps(r1)  # the record is JSON-ready


def test_chain_probabilities_length_and_peak(musan: Path, x: np.ndarray) -> None:
    aug = from_options([str(musan)], None, gain=True, sample_rate=SR, p_noise=0.5)
    applied = [bool(aug(x, SR, np.random.default_rng(s))[1].get("noise")) for s in range(40)]
    assert 5 < sum(applied) < 35
    loud = np.full(SR // 4, 0.95, dtype=np.float32) * np.sign(np.sin(np.arange(SR // 4)))
    y, rec = Augmenter([RandomGain(6, 6)])(loud, SR, np.random.default_rng(0))
    assert len(y) == len(loud) and np.max(np.abs(y)) <= 0.999 and "peak_scale" in rec
    y, rec = Augmenter([])(x, SR, np.random.default_rng(0))
    assert rec == {} and np.array_equal(y, x) and y is not x
    with pytest.raises(ValueError):
        Augmenter([RandomGain()], [1.5])


# -- the CLI -------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """3 utterances of 2 speakers (one FLAC at 8 kHz, one a segment of a longer file)."""
    audio = tmp_path / "corpus"
    _write(audio / "spk1" / "a" / "00001.wav", _speech_like(SR // 2, 1))
    _write(audio / "spk1" / "b" / "00002.flac", _speech_like(4000, 2)[:4000], sr=8000, subtype="PCM_16")
    _write(audio / "spk2" / "a" / "long.wav", _speech_like(SR, 3))
    utts = [
        Utterance("spk1/a/00001.wav", str(audio / "spk1/a/00001.wav"), "spk1", 0.5, SR),
        Utterance("spk1/b/00002.flac", str(audio / "spk1/b/00002.flac"), "spk1", 0.5, 8000),
        Utterance("spk2/a/long.wav#1", str(audio / "spk2/a/long.wav"), "spk2", 0.4, SR, start=0.3, end=0.7),
    ]
    write_manifest(utts, tmp_path / "manifest.tsv")
    return tmp_path


def test_cli_writes_audio_manifest_records_and_resumes(corpus: Path, musan: Path) -> None:
    out = corpus / "aug"
    args = ["augment", str(corpus / "manifest.tsv"), "-o", str(out), "--noise", str(musan),
            "--speed", "--gain", "--copies", "2", "--p-noise", "1", "--seed", "3", "--json"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["written"] == 6 and summary["skipped"] == 0
    rows = read_manifest(out / "manifest.tsv")
    assert [r.utt_id for r in rows] == [
        "spk1/a/00001-aug0.wav", "spk1/a/00001-aug1.wav", "spk1/b/00002-aug0.wav",
        "spk1/b/00002-aug1.wav", "spk2/a/long.wav#1-aug0.wav", "spk2/a/long.wav#1-aug1.wav",
    ]  # fmt: skip
    assert [r.speaker for r in rows] == ["spk1"] * 4 + ["spk2"] * 2
    recs = [json.loads(line) for line in (out / "augment.jsonl").read_text().splitlines()]
    assert [r["utt_id"] for r in recs] == [r.utt_id for r in rows]
    assert recs[0]["source"] == "spk1/a/00001.wav" and recs[4]["source"] == "spk2/a/long.wav#1"
    for row, rec in zip(rows, recs, strict=True):
        info = sf.info(row.path)
        assert info.samplerate == SR and Path(row.path).is_file()
        assert abs(info.frames / SR - row.duration) < 1e-3
        assert {"speed", "gain", "noise"} <= set(rec["augment"])
        assert abs(info.frames - 0.5 * SR / rec["augment"]["speed"]["factor"] * (0.8 if "#" in row.utt_id else 1)) <= 2
    first = sf.read(str(out / "spk1/a/00001-aug1.wav"))[0]

    # Rerun: everything is skipped; a deleted file is remade identically (per-file seeding).
    (out / "spk1/a/00001-aug1.wav").unlink()
    manifest_before = (out / "manifest.tsv").read_text()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["written"] == 1 and summary["skipped"] == 5
    assert np.array_equal(sf.read(str(out / "spk1/a/00001-aug1.wav"))[0], first)
    assert (out / "manifest.tsv").read_text() == manifest_before
    assert len((out / "augment.jsonl").read_text().splitlines()) == 6

    # Other options into the same folder: refused, nothing clobbered.
    res = runner.invoke(app, [*args[:-2], "4", "--json"])
    assert res.exit_code == 2 and "different options (seed)" in res.stderr
    assert (out / "manifest.tsv").read_text() == manifest_before


def test_cli_bad_input_is_one_line_exit_2(corpus: Path) -> None:
    out = corpus / "aug"
    missing = corpus / "no-such-noise"
    res = runner.invoke(app, ["augment", str(corpus / "manifest.tsv"), "-o", str(out), "--noise", str(missing)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "no such noise folder" in lines[0]
    assert not out.exists()
    res = runner.invoke(app, ["augment", str(corpus / "manifest.tsv"), "-o", str(out)])
    assert res.exit_code == 2 and "nothing to do" in res.stderr
    res = runner.invoke(app, ["augment", str(corpus / "nope.tsv"), "-o", str(out), "--gain"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1


# -- the core job, without the CLI ---------------------------------------------------------------


def test_run_offline_same_result_with_any_workers_and_reports_progress(corpus: Path) -> None:
    from spkemb.augment import OfflineOptions, run_offline

    utts = read_manifest(corpus / "manifest.tsv")
    options = OfflineOptions(speed=True, gain=True, seed=5, sample_rate=SR)
    plans: list[tuple[int, int]] = []
    steps: list[tuple[int, int, str]] = []
    one = run_offline(
        utts,
        corpus / "w1",
        options,
        copies=2,
        on_plan=lambda *a: plans.append(a),
        on_progress=lambda *a: steps.append(a),
    )
    assert (one.utterances, one.files, one.written, one.skipped) == (3, 6, 6, 0)
    assert plans == [(6, 0)] and steps[0] == (0, 6, "") and [s[0] for s in steps] == list(range(7))
    two = run_offline(corpus / "manifest.tsv", corpus / "w2", options, copies=2, workers=2)
    assert two.written == 6 and two.manifest == corpus / "w2" / "manifest.tsv"
    for row in read_manifest(one.manifest):
        assert np.array_equal(sf.read(row.path)[0], sf.read(str(corpus / "w2" / row.utt_id))[0])
    assert one.records.read_text() == two.records.read_text()
    # A rerun writes nothing and calls on_progress not at all; other options are refused.
    steps.clear()
    again = run_offline(
        utts,
        corpus / "w1",
        options,
        copies=2,
        on_plan=lambda *a: plans.append(a),
        on_progress=lambda *a: steps.append(a),
    )
    assert (again.written, again.skipped, plans[-1], steps) == (0, 6, (6, 6), [])
    with pytest.raises(InputError, match=r"different options \(gain\)"):
        run_offline(utts, corpus / "w1", OfflineOptions(speed=True, seed=5, sample_rate=SR), copies=2)
    bad = [Utterance("../escape.wav", utts[0].path, "spk1", 0.5, SR)]
    with pytest.raises(InputError, match="cannot name a file under the output folder"):
        run_offline(bad, corpus / "w3", options)
    assert not (corpus / "w3").exists()


@pytest.mark.parametrize("options, message", [
    ({"gain": True, "sample_rate": 0}, "sample_rate: must be positive, got 0"),
    ({"gain": True, "p_noise": 1.5}, "p_noise: must be between 0 and 1, got 1.5"),
    ({"gain": True, "p_reverb": -0.1}, "p_reverb: must be between 0 and 1, got -0.1"),
    ({"gain": True, "p_noise": float("nan")}, "p_noise: must be between 0 and 1"),
    ({"rir": " "}, "rir: needs a folder of RIR files or 'simulate'"),
    ({"rir": "", "gain": True}, "rir: needs a folder of RIR files or 'simulate'"),
    ({}, "nothing to do: give `noise`, `rir`, `speed` or `gain`"),
])  # fmt: skip
def test_offline_options_refuse_bad_values_naming_the_field(options: dict, message: str) -> None:
    from spkemb.augment import OfflineOptions

    with pytest.raises(InputError, match=re.escape(message)):
        OfflineOptions(**options)


@pytest.mark.parametrize("kwargs, message", [
    ({"copies": 0}, "copies: must be at least 1, got 0"),
    ({"workers": 0}, "workers: must be at least 1, got 0"),
])  # fmt: skip
def test_run_offline_refuses_bad_values_before_writing(corpus: Path, kwargs: dict, message: str) -> None:
    from spkemb.augment import OfflineOptions, run_offline

    out = corpus / "aug"
    with pytest.raises(InputError, match=re.escape(message)):
        run_offline(corpus / "manifest.tsv", out, OfflineOptions(gain=True), **kwargs)
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--gain", "--copies", "0"], "--copies: must be at least 1"),
    (["--gain", "--workers", "0"], "--workers: must be at least 1"),
    (["--gain", "--sample-rate", "0"], "--sample-rate: must be positive"),
    (["--gain", "--p-noise", "2"], "--p-noise: must be between 0 and 1"),
    (["--rir", ""], "--rir: needs a folder"),
    ([], "nothing to do: give --noise, --rir, --speed or --gain"),
])  # fmt: skip
def test_cli_bad_values_are_one_line_exit_2(corpus: Path, args: list[str], message: str) -> None:
    out = corpus / "aug"
    res = runner.invoke(app, ["augment", str(corpus / "manifest.tsv"), "-o", str(out), *args])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()


def test_noise_draws_do_not_depend_on_what_a_process_found_bad(tmp_path: Path, x: np.ndarray) -> None:
    """A resumed run (fresh workers, nothing known bad yet) must draw what the first run drew."""
    d = tmp_path / "noise"
    d.mkdir()
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    for i in range(3):
        _write(d / f"good{i}.wav", 0.1 * np.random.default_rng(i).standard_normal(SR))
    seasoned, fresh = AddNoise(NoiseBank(d)), AddNoise(NoiseBank(d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AugmentWarning)
        for seed in range(20):  # the seasoned bank meets the corrupt file and remembers it
            seasoned(x, SR, np.random.default_rng(100 + seed))
        for seed in range(10):
            a, ra = seasoned(x, SR, np.random.default_rng(seed))
            b, rb = fresh(x, SR, np.random.default_rng(seed))
            assert ra == rb and np.array_equal(a, b)
