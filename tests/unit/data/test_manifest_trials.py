from pathlib import Path

import numpy as np
import pytest

from spkemb.data.manifest import Utterance, read_manifest, write_manifest
from spkemb.data.trials import Trials, generate_trials, read_trials, write_trials
from spkemb.errors import InputError


def _utts(n_spk: int = 5, n_utt: int = 4) -> list[Utterance]:
    return [
        Utterance(f"s{s}/u{i}.wav", f"/x/s{s}/u{i}.wav", f"s{s}", 1.0 + i, 16000)
        for s in range(n_spk)
        for i in range(n_utt)
    ]


def test_manifest_round_trip_with_segments(tmp_path: Path) -> None:
    utts = _utts(2, 2) + [Utterance("long.wav#1", "/x/long.wav", "", 2.0, 8000, 1.0, 3.0)]
    write_manifest(utts, tmp_path / "m.tsv")
    back = read_manifest(tmp_path / "m.tsv")
    assert back == utts


def test_manifest_relative_paths_resolve_against_its_folder(tmp_path: Path) -> None:
    (tmp_path / "m.tsv").write_text("utt_id\tpath\tspeaker\tduration\tsample_rate\na.wav\taudio/a.wav\ts\t1.0\t16000\n")
    (u,) = read_manifest(tmp_path / "m.tsv")
    assert u.path == str(tmp_path / "audio" / "a.wav")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty"),
        ("utt_id\tpath\n", "lacks column"),
        ("utt_id\tpath\tspeaker\tduration\tsample_rate\na\tb\tc\tnot-a-number\t16000\n", "line 2"),
        ("utt_id\tpath\tspeaker\tduration\tsample_rate\na\tb\tc\t1\t16000\na\tb\tc\t1\t16000\n", "duplicate"),
    ],
)
def test_bad_manifest(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "m.tsv").write_text(text)
    with pytest.raises(InputError, match=problem):
        read_manifest(tmp_path / "m.tsv")


def test_trial_formats(tmp_path: Path) -> None:
    (tmp_path / "vox.txt").write_text("1 a b\n0 a c\n")
    (tmp_path / "kaldi.txt").write_text("a b target\na c nontarget\n")
    (tmp_path / "scores.txt").write_text("a b 0.5 target\na c -0.1 nontarget\n")
    (tmp_path / "unl.txt").write_text("a b\na c\n")
    for name in ("vox.txt", "kaldi.txt", "scores.txt"):
        t = read_trials(tmp_path / name)
        assert t.enroll == ["a", "a"] and t.test == ["b", "c"] and list(t.labels) == [1, 0]
    assert read_trials(tmp_path / "unl.txt").labels is None


@pytest.mark.parametrize("text", ["1 a b\n1 a b c d e\n", "1 a b\n1 a\n", "a\n"])
def test_malformed_trial_line_names_line(tmp_path: Path, text: str) -> None:
    (tmp_path / "t.txt").write_text(text)
    with pytest.raises(InputError, match=r"t.txt: line"):
        read_trials(tmp_path / "t.txt")


def test_write_trials_round_trip(tmp_path: Path) -> None:
    t = Trials(["a", "b"], ["c", "d"], np.array([1, 0], dtype=np.int8))
    for fmt in ("voxceleb", "kaldi"):
        write_trials(t, tmp_path / fmt, fmt)
        back = read_trials(tmp_path / fmt)
        assert back.enroll == t.enroll and list(back.labels) == [1, 0]


@pytest.mark.parametrize("n_target, n_non", [(10, 50), (30, 160)])  # small and exhaustive requests
def test_generate_trials(n_target: int, n_non: int) -> None:
    utts = _utts()
    t = generate_trials(utts, n_target, n_non, seed=3)
    spk = {u.utt_id: u.speaker for u in utts}
    assert (t.n_target, t.n_nontarget) == (n_target, n_non)
    pairs = set()
    for e, s, lab in zip(t.enroll, t.test, t.labels, strict=True):
        assert e != s
        assert (spk[e] == spk[s]) == bool(lab)
        pairs.add(frozenset((e, s)))
    assert len(pairs) == len(t)
    again = generate_trials(utts, n_target, n_non, seed=3)
    assert again.enroll == t.enroll and again.test == t.test


def test_generate_trials_excludes_speakers_and_checks_counts() -> None:
    t = generate_trials(_utts(), 5, 20, seed=0, exclude_speakers={"s0", "s1"})
    assert not any(x.startswith(("s0/", "s1/")) for x in t.enroll + t.test)
    with pytest.raises(InputError, match="at most"):
        generate_trials(_utts(), 1000, 10)
