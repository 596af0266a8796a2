"""Issue 21 (trust, round 3), the prepare items: segments for a PLDA set, cohort or dev trials
(`prepare --segment`), PrepareOptions, and the notes for a flat folder and 8-kHz audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.data.manifest import Utterance, read_manifest
from spkemb.data.prepare import PrepareOptions, prepare_manifest
from spkemb.data.segments import segment_utterances
from spkemb.data.synthetic import make_corpus
from spkemb.errors import InputError

runner = CliRunner()


def _utt(duration: float, start: float | None = None) -> Utterance:
    return Utterance("a/x.wav", "/x.wav", "a", duration, 16000, start, None if start is None else start + duration)


def test_segments_cover_the_recording_and_keep_a_long_enough_tail() -> None:
    segs = segment_utterances([_utt(10.5)], 3.0)  # 3 + 3 + 3 + 1.5 (< 2/3 of 3: left out)
    assert [s.utt_id for s in segs] == ["a/x.wav@0-3", "a/x.wav@3-6", "a/x.wav@6-9"]
    assert [(s.start, s.end, s.duration) for s in segs] == [(0.0, 3.0, 3.0), (3.0, 6.0, 3.0), (6.0, 9.0, 3.0)]
    segs = segment_utterances([_utt(11.0)], 3.0)  # a 2-s tail is kept
    assert segs[-1].utt_id == "a/x.wav@9-11" and segs[-1].duration == pytest.approx(2.0)
    segs = segment_utterances([_utt(4.0, start=20.0)], 2.0)  # a segment of a segment: times in the file
    assert [(s.start, s.end) for s in segs] == [(20.0, 22.0), (22.0, 24.0)]
    assert segment_utterances([_utt(1.0)], 3.0) == []
    drawn = segment_utterances([_utt(60.0)], 3.0, 1.5, 8.0, seed=1)
    lengths = [s.duration for s in drawn]
    assert min(lengths[:-1]) >= 1.5 and max(lengths) <= 8.0 and len(set(lengths)) > 3
    assert drawn == segment_utterances([_utt(60.0)], 3.0, 1.5, 8.0, seed=1)


def test_prepare_segment_makes_plda_training_work_on_one_recording_per_speaker(tmp_path: Path) -> None:
    """One recording per speaker (as the shipped train-clean-100): PLDA needs several items per speaker."""
    make_corpus(tmp_path / "c", n_speakers=6, utts_per_speaker=1, seconds=(7.0, 8.0), sample_rate=16000, seed=0)
    whole, seg = tmp_path / "whole.tsv", tmp_path / "seg.tsv"
    assert runner.invoke(app, ["prepare", str(tmp_path / "c"), "-o", str(whole)]).exit_code == 0
    r = runner.invoke(app, ["prepare", str(whole), "-o", str(seg), "--segment", "2", "--trials", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    utts = read_manifest(seg)
    assert len(utts) >= 18 and all(u.start is not None and u.end is not None for u in utts)
    assert "target" in r.output and (tmp_path / "t").read_text().count("\n") > 0
    for m in ("whole", "seg"):
        r = runner.invoke(app, ["extract", "mfcc-stats", str(tmp_path / f"{m}.tsv"), "-o", str(tmp_path / f"{m}.h5")])
        assert r.exit_code == 0, r.output
    score = ["score", str(tmp_path / "t"), str(tmp_path / "seg.h5"), "--backend", "plda"]
    r = runner.invoke(app, [*score, "--train", str(tmp_path / "whole.h5")])
    assert r.exit_code == 2 and "every training speaker has one" in r.output
    r = runner.invoke(app, [*score, "--train", str(tmp_path / "seg.h5"), "--allow-mixed-encoders"])
    assert r.exit_code == 0 and "EER" in r.output, r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--segment", "0"], "--segment must be > 0"),
        (["--segment-min", "1"], "go with --segment"),
        (["--segment", "3", "--segment-min", "4"], "--segment-min must be in"),
        (["--segment", "3", "--segment-max", "1"], "--segment-max must be at least"),
    ],
)
def test_bad_segment_options_are_refused_before_reading(tmp_path: Path, args: list[str], message: str) -> None:
    r = runner.invoke(app, ["prepare", str(tmp_path / "missing"), "-o", str(tmp_path / "m.tsv"), *args])
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "m.tsv").exists()


def test_prepare_options_are_one_dataclass_with_checks(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="`min_duration`"):
        PrepareOptions(min_duration=-1.0)
    with pytest.raises(InputError, match="`workers`"):
        PrepareOptions(workers=0)
    assert "segment" in [d.name for d in PrepareOptions.describe()]
    make_corpus(tmp_path / "c", n_speakers=2, utts_per_speaker=2, seconds=(1.0, 1.5), sample_rate=16000, seed=0)
    res = prepare_manifest([tmp_path / "c"], PrepareOptions(output=str(tmp_path / "m.tsv")))
    assert len(res.utterances) == 4
    res = prepare_manifest([tmp_path / "c"], output=str(tmp_path / "m2.tsv"))  # the keywords still work
    assert len(read_manifest(tmp_path / "m2.tsv")) == 4


def test_a_flat_folder_of_8_khz_files_gets_both_notes(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    for name in ("0_jackson_0.wav", "1_theo_0.wav"):
        sf.write(root / name, np.random.default_rng(0).normal(size=8000) * 0.1, 8000)
    r = runner.invoke(app, ["prepare", str(root), "-o", str(tmp_path / "m.tsv")])
    assert r.exit_code == 0, r.output
    assert "0 speakers" in r.output and "--layout regex --speaker-regex" in r.output
    assert "2 files (2 at 8 kHz) are not at 16 kHz" in r.output


def test_finetune_without_speakers_names_the_manifest(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(root / name, np.zeros(16000), 16000)
    m = tmp_path / "m.tsv"
    assert runner.invoke(app, ["prepare", str(root), "-o", str(m)]).exit_code == 0
    r = runner.invoke(app, ["finetune", str(m), "-o", str(tmp_path / "x"), "--max-steps", "1"])
    assert r.exit_code == 2 and "no speaker column values" in r.output and "m.tsv" in r.output, r.output
