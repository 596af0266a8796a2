"""Random crops for pretraining: shapes, where they come from, what is read, determinism."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from spkemb.data.crops import CropDataset, SkippedAudioWarning, check_views, collate_crops, measure_loader
from spkemb.data.manifest import Utterance
from spkemb.data.sampler import EpochIndex, ResumableSampler
from spkemb.errors import InputError

SR = 16000


def _ramp(n: int) -> np.ndarray:
    """Distinct, exactly representable values: sample k is k / 2**17 (float WAV keeps them)."""
    return (np.arange(n, dtype=np.float64) / 2**17).astype(np.float32)


def _write(path: Path, x: np.ndarray, sr: int = SR) -> Utterance:
    sf.write(str(path), x, sr, subtype="FLOAT")
    return Utterance(path.name, str(path), "s", len(x) / sr, sr)


@pytest.fixture()
def ramp_utt(tmp_path: Path) -> Utterance:
    return _write(tmp_path / "ramp.wav", _ramp(3 * SR))


def _offset(crop: np.ndarray) -> int:
    return int(round(float(crop[0]) * 2**17))


def test_shapes_and_origin(ramp_utt: Utterance) -> None:
    x = _ramp(3 * SR)
    ds = CropDataset([ramp_utt], SR, [(2, 0.5), (3, 0.25)], seed=1)
    item = ds[0]
    assert item is not None and item["index"] == 0
    assert [v.shape for v in item["views"]] == [(2, SR // 2), (3, SR // 4)]
    for group in item["views"]:
        assert group.dtype == np.float32
        for crop in group:
            off = _offset(crop)
            np.testing.assert_array_equal(crop, x[off : off + len(crop)])
    offsets = {_offset(c) for g in item["views"] for c in g}
    assert len(offsets) == 5  # independent offsets


def test_segment_bounds_respected(tmp_path: Path) -> None:
    u = _write(tmp_path / "long.wav", _ramp(4 * SR))
    seg = Utterance("seg", u.path, "s", 1.0, SR, start=1.0, end=2.0)
    ds = CropDataset([seg], SR, [(4, 0.5)], seed=0)
    for epoch in range(10):
        ds.set_epoch(epoch)
        for crop in ds[0]["views"][0]:
            off = _offset(crop)
            assert SR <= off and off + len(crop) <= 2 * SR


def test_reads_only_the_needed_frames(ramp_utt: Utterance, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    seeks: list[int] = []
    real_read, real_seek = sf.SoundFile.read, sf.SoundFile.seek

    def read(self, frames=-1, *args, **kwargs):  # noqa: ANN001, ANN202
        reads.append(frames)
        return real_read(self, frames, *args, **kwargs)

    def seek(self, frames, *args, **kwargs):  # noqa: ANN001, ANN202
        seeks.append(frames)
        return real_seek(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", read)
    monkeypatch.setattr(sf.SoundFile, "seek", seek)
    ds = CropDataset([ramp_utt], SR, [(2, 0.5)], seed=3)
    item = ds[0]
    assert reads == [SR // 2, SR // 2]  # two crops, never the whole 3-s file
    assert {_offset(c) for c in item["views"][0]} - {0} <= set(seeks)  # reached by seeking


def test_resamples_to_model_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 3 * 8000
    t = np.arange(n) / 8000
    u = _write(tmp_path / "tone8k.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)
    reads: list[int] = []
    real_read = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, frames=-1, *a, **k: reads.append(frames)
                        or real_read(self, frames, *a, **k))  # fmt: skip
    ds = CropDataset([u], SR, [(1, 0.5)], seed=0)
    crop = ds[0]["views"][0][0]
    assert crop.shape == (SR // 2,) and reads == [4000]  # 0.5 s of the 8-kHz file
    # Still a 440-Hz tone at the new rate.
    spec = np.abs(np.fft.rfft(crop * np.hanning(len(crop))))
    assert abs(np.argmax(spec) * SR / len(crop) - 440) < 5


def test_short_utterance_is_repeated(tmp_path: Path) -> None:
    x = _ramp(1000)
    u = _write(tmp_path / "short.wav", x)
    ds = CropDataset([u], SR, [(2, 0.25)], seed=0)
    for crop in ds[0]["views"][0]:
        assert crop.shape == (SR // 4,)
        start = _offset(crop)
        expected = np.tile(np.roll(x, -start), -(-len(crop) // len(x)))[: len(crop)]
        np.testing.assert_array_equal(crop, expected)


def test_determinism(ramp_utt: Utterance) -> None:
    utts = [ramp_utt] * 3

    def crops(seed: int, epoch: int, index: int) -> list[np.ndarray]:
        ds = CropDataset(utts, SR, [(2, 0.25)], augmenter=_noisy, seed=seed)
        ds.set_epoch(epoch)
        return ds[index]["views"]

    a, b = crops(0, 1, 2), crops(0, 1, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    for other in (crops(0, 2, 2), crops(1, 1, 2), crops(0, 1, 1)):
        assert not np.array_equal(a[0], other[0])
    # The epoch an EpochIndex carries wins over set_epoch.
    ds = CropDataset(utts, SR, [(2, 0.25)], augmenter=_noisy, seed=0)
    ds.set_epoch(7)
    assert np.array_equal(ds[EpochIndex(2, 1)]["views"][0], a[0])


def _noisy(x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    return (x + 0.01 * rng.standard_normal(len(x))).astype(np.float32), {}


def test_augmenter_per_crop_and_length_kept(ramp_utt: Utterance) -> None:
    calls: list[int] = []

    def stretch(x: np.ndarray, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        calls.append(len(x))
        factor = float(rng.choice([0.9, 1.1]))  # changes the length, like speed perturbation
        return np.interp(np.arange(0, len(x), factor), np.arange(len(x)), x).astype(np.float32), {}

    ds = CropDataset([ramp_utt], SR, [(2, 0.25), (3, 0.125)], augmenter=stretch, seed=0)
    item = ds[0]
    assert calls == [SR // 4] * 2 + [SR // 8] * 3
    assert [v.shape for v in item["views"]] == [(2, SR // 4), (3, SR // 8)]


def test_unreadable_file_gives_none_and_collate(tmp_path: Path, ramp_utt: Utterance) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    missing = Utterance("gone", str(tmp_path / "gone.wav"), "s", 2.0, SR)
    ds = CropDataset([ramp_utt, Utterance("bad", str(bad), "s", 2.0, SR), missing], SR, [(2, 0.25)])
    with pytest.warns(SkippedAudioWarning, match="bad.wav"):
        assert ds[1] is None
    with pytest.warns(SkippedAudioWarning, match="gone.wav"):
        assert ds[2] is None
    with pytest.warns(SkippedAudioWarning):
        batch = collate_crops([ds[0], ds[1], ds[0]])
    assert [tuple(v.shape) for v in batch["views"]] == [(2, 2, SR // 4)]
    assert batch["views"][0].dtype == torch.float32
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [0, 0]


def test_workers_and_resumable_sampler_give_the_same_batches(ramp_utt: Utterance) -> None:
    ds = CropDataset([ramp_utt] * 8, SR, [(2, 0.1)], augmenter=_noisy, seed=5)

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = ResumableSampler(len(ds), 4, seed=5)
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate_crops)
        out = []
        for _ in range(2):  # two epochs
            for b in loader:
                out.append(b["views"][0])
                sampler.mark_consumed()
        return out

    a, b = batches(0), batches(2)
    assert len(a) == 4
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[2])  # epoch 1 differs from epoch 0


def test_check_views_and_measure_loader(ramp_utt: Utterance) -> None:
    assert check_views([(2, 2)]) == [(2, 2.0)]
    for bad in ([], [(0, 1.0)], [(1, 0.0)], [(1,)]):
        with pytest.raises(ValueError):
            check_views(bad)
    ds = CropDataset([ramp_utt] * 4, SR, [(2, 0.1)])
    assert measure_loader(ds, batch_size=2, workers=0, seconds=0.2) > 0


def test_speed_is_drawn_once_per_utterance(tmp_path: Path) -> None:
    """Every crop of an item has the same speed (hence pitch); items differ; crop lengths are kept."""
    from spkemb.augment.chain import from_options

    t = np.arange(3 * SR) / SR
    path = tmp_path / "tone.wav"
    sf.write(path, (0.5 * np.sin(2 * np.pi * 400 * t)).astype(np.float32), SR)
    utt = Utterance("tone", str(path), "s", 3.0, SR)
    aug = from_options(speed=True, speed_factors=(0.8, 1.25), sample_rate=SR)
    ds = CropDataset([utt] * 12, SR, [(3, 0.5), (2, 0.25)], augmenter=aug, seed=0)
    assert ds.augmenter is None and ds.speed is not None  # speed was the only step

    def pitch(x: np.ndarray) -> float:
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8 * len(x)))
        return float(np.fft.rfftfreq(8 * len(x), 1 / SR)[spec.argmax()])

    seen = set()
    for i in range(12):
        views = ds[i]["views"]
        assert [v.shape for v in views] == [(3, SR // 2), (2, SR // 4)]
        f0s = [pitch(c) for v in views for c in v]
        assert max(f0s) - min(f0s) < 10, f0s
        seen.add(round(f0s[0] / 100))
    assert seen == {3, 5}  # 400 Hz x 0.8 = 320 and x 1.25 = 500: both factors occur


def test_disjoint_offsets_never_overlap_and_cover_every_order() -> None:
    from spkemb.data.crops import disjoint_offsets

    rng = np.random.default_rng(0)
    sizes = [50, 50, 20, 20, 20]
    orders = set()
    for _ in range(300):
        starts = disjoint_offsets(sizes, 200, rng)
        spans = sorted(zip(starts, sizes, strict=True))
        assert spans[0][0] >= 0 and spans[-1][0] + spans[-1][1] <= 200
        assert all(a + n <= b for (a, n), (b, _) in pairwise(spans))
        orders.add(tuple(int(i) for i in np.argsort(starts)))
    assert len(orders) > 20  # the crops take random places along the utterance, not a fixed order
    assert disjoint_offsets([100, 100], 200, rng) in ([0, 100], [100, 0])  # no slack: exactly tiled


def test_disjoint_crops_share_no_sample_when_they_fit(ramp_utt: Utterance, tmp_path: Path) -> None:
    views = [(2, 1.0), (2, 0.5)]  # 3 s of crops from a 3-s utterance: they tile it
    overlapping = 0
    for seed in range(10):
        item = CropDataset([ramp_utt], SR, views, seed=seed, disjoint=True)[0]
        spans = sorted((_offset(c), len(c)) for v in item["views"] for c in v)
        assert all(a + n <= b for (a, n), (b, _) in pairwise(spans)), spans
        plain = CropDataset([ramp_utt], SR, views, seed=seed)[0]
        spans = sorted((_offset(c), len(c)) for v in plain["views"] for c in v)
        overlapping += any(a + n > b for (a, n), (b, _) in pairwise(spans))
    assert overlapping > 5  # without the option, crops of a short utterance mostly overlap
    short = _write(tmp_path / "short.wav", _ramp(2 * SR))  # too short for 3 s of crops: drawn independently
    item = CropDataset([short], SR, views, seed=0, disjoint=True)[0]
    assert [v.shape for v in item["views"]] == [(2, SR), (2, SR // 2)]


def test_pretrain_refuses_unknown_data_options(tmp_path: Path, ramp_utt: Utterance) -> None:
    from spkemb.train.config import merge_config
    from spkemb.train.pretrain import run_pretrain

    over = {"method": "cel", "max_steps": 1, "data_options": {"disjoint_crop": True}}
    with pytest.raises(InputError, match="unknown key 'disjoint_crop'"):  # merging a config refuses it
        merge_config({}, over)
    cfg = merge_config({}, over, check_options=False)  # and so does the job, for a config built otherwise
    with pytest.raises(InputError, match="unknown key 'disjoint_crop'"):
        run_pretrain([ramp_utt], cfg, tmp_path / "exp")
    assert not (tmp_path / "exp").exists()
