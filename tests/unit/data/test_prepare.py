"""`spkemb prepare`: folder layouts, bad files, Kaldi import/export, trials, the CLI's outputs and errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.data.kaldi import load_kaldi_dir, read_kaldi_dir, write_kaldi_dir
from spkemb.data.layouts import merge_roots, scan
from spkemb.data.manifest import Utterance, read_manifest, write_manifest
from spkemb.data.trials import read_trials
from spkemb.errors import InputError

SR = 8000
CORPORA = Path(os.environ.get("SPKEMB_CORPORA", Path(__file__).parents[4] / "shared" / "corpora"))


def tone(path: Path, seconds: float, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), 0.3 * np.sin(2 * np.pi * 220 * t), sr, subtype="PCM_16")
    return path


def run(*args: str):
    return CliRunner().invoke(app, ["prepare", *map(str, args)])


def by_id(utts: list[Utterance]) -> dict[str, Utterance]:
    return {u.utt_id: u for u in utts}


# --- layouts ---------------------------------------------------------------------------------------


def test_voxceleb_layout_ids_speakers_durations(tmp_path: Path) -> None:
    tone(tmp_path / "id10001/abcDEF/00001.wav", 0.5)
    tone(tmp_path / "id10001/xyz/00002.wav", 0.75, 16000)
    tone(tmp_path / "id10002/abcDEF/00001.wav", 1.25)
    (tmp_path / "id10002/notes.txt").write_text("not audio")
    for layout in ("voxceleb", "auto"):
        utts, problems = scan(tmp_path, layout=layout, workers=2)
        assert problems == []
        assert [u.utt_id for u in utts] == [
            "id10001/abcDEF/00001.wav",
            "id10001/xyz/00002.wav",
            "id10002/abcDEF/00001.wav",
        ]
        assert [u.speaker for u in utts] == ["id10001", "id10001", "id10002"]
        assert [u.duration for u in utts] == pytest.approx([0.5, 0.75, 1.25])
        assert [u.sample_rate for u in utts] == [SR, 16000, SR]
        assert all(Path(u.path).is_absolute() and Path(u.path).is_file() for u in utts)


def test_voxceleb_layout_reports_a_file_outside_a_speaker_folder(tmp_path: Path) -> None:
    tone(tmp_path / "spk/s/1.wav", 0.2)
    tone(tmp_path / "loose.wav", 0.2)
    utts, problems = scan(tmp_path, layout="voxceleb")
    assert [u.utt_id for u in utts] == ["spk/s/1.wav"]
    assert [Path(p).name for p, _ in problems] == ["loose.wav"]


def test_librispeech_nested_flat_and_one_level(tmp_path: Path) -> None:
    tone(tmp_path / "test-other/1688/142285/1688-142285-0001.flac", 0.4)
    tone(tmp_path / "test-other/1688/142285/1688-142285-0002.flac", 0.3)
    tone(tmp_path / "test-other/367/130732/367-130732-0005.flac", 0.3)
    tone(tmp_path / "train/103-1240-0000.flac", 0.5)
    tone(tmp_path / "7113-86041-0000.flac", 0.6)
    for layout in ("librispeech", "auto"):
        utts = by_id(scan(tmp_path, layout=layout)[0])
        assert {k: u.speaker for k, u in utts.items()} == {
            "7113-86041-0000.flac": "7113",
            "test-other/1688/142285/1688-142285-0001.flac": "1688",
            "test-other/1688/142285/1688-142285-0002.flac": "1688",
            "test-other/367/130732/367-130732-0005.flac": "367",
            "train/103-1240-0000.flac": "103",
        }
        assert utts["7113-86041-0000.flac"].duration == pytest.approx(0.6)
    tone(tmp_path / "train/readme-clip.flac", 0.2)
    utts, problems = scan(tmp_path, layout="librispeech")
    assert len(utts) == 5 and len(problems) == 1 and "<spk>-<chapter>-<utt>" in problems[0][1]


def test_cnceleb_layout(tmp_path: Path) -> None:
    tone(tmp_path / "data/id00001/singing-01-001.flac", 0.3)
    tone(tmp_path / "data/id00002/speech-02-003.flac", 0.3)
    tone(tmp_path / "eval/test/id00800-singing-01-001.flac", 0.3)
    tone(tmp_path / "eval/enroll/id00800-enroll.flac", 0.3)
    utts = by_id(scan(tmp_path, layout="cnceleb")[0])
    assert {k: u.speaker for k, u in utts.items()} == {
        "data/id00001/singing-01-001.flac": "id00001",
        "data/id00002/speech-02-003.flac": "id00002",
        "eval/enroll/id00800-enroll.flac": "id00800",
        "eval/test/id00800-singing-01-001.flac": "id00800",
    }
    auto = by_id(scan(tmp_path / "data", layout="auto")[0])
    assert auto["id00001/singing-01-001.flac"].speaker == "id00001"
    auto = by_id(scan(tmp_path, layout="auto")[0])
    assert auto["data/id00002/speech-02-003.flac"].speaker == "id00002"  # a leading data/ is skipped


def test_regex_and_flat_layouts(tmp_path: Path) -> None:
    tone(tmp_path / "clips/alice_001.wav", 0.2)
    tone(tmp_path / "clips/bob_002.wav", 0.2)
    tone(tmp_path / "clips/README.wav", 0.2)
    utts, problems = scan(tmp_path, layout="regex", speaker_regex=r"(?P<speaker>[a-z]+)_\d+\.wav$")
    assert {u.utt_id: u.speaker for u in utts} == {"clips/alice_001.wav": "alice", "clips/bob_002.wav": "bob"}
    assert [Path(p).name for p, _ in problems] == ["README.wav"]
    utts, _ = scan(tmp_path, layout="regex", speaker_regex=r"^clips/([a-z]+)_")
    assert [u.speaker for u in utts] == ["alice", "bob"]
    utts, problems = scan(tmp_path, layout="flat")
    assert len(utts) == 3 and not problems and all(u.speaker == "" for u in utts)
    for bad in ("(unclosed", "no_group"):
        with pytest.raises(InputError):
            scan(tmp_path, layout="regex", speaker_regex=bad)
    with pytest.raises(InputError):
        scan(tmp_path, layout="regex")


def bad_files(root: Path) -> dict[str, Path]:
    tone(root / "spk1/s/good.wav", 0.5)
    tone(root / "spk2/s/good.wav", 0.5)
    files = {
        "corrupt": root / "spk1/s/corrupt.wav",
        "empty": root / "spk1/s/empty.wav",
        "zero": root / "spk2/s/zero.wav",
        "short": root / "spk2/s/short.wav",
    }
    files["corrupt"].write_bytes(b"RIFF\x00\x01garbage" * 20)
    sf.write(str(files["empty"]), np.zeros(0, dtype=np.float32), SR, subtype="PCM_16")
    files["zero"].write_bytes(b"")
    tone(files["short"], 0.05)
    return files


def test_bad_files_are_problems_not_crashes(tmp_path: Path) -> None:
    files = bad_files(tmp_path)
    utts, problems = scan(tmp_path, min_duration=0.1)
    assert [u.utt_id for u in utts] == ["spk1/s/good.wav", "spk2/s/good.wav"]
    found = dict(problems)
    assert set(found) == {str(p.absolute()) for p in files.values()}
    assert "0 bytes" in found[str(files["zero"].absolute())]
    assert "too short" in found[str(files["short"].absolute())]
    # Without a minimum duration the short file is fine.
    assert len(scan(tmp_path)[0]) == 3


def test_cli_reports_bad_files_and_leaves_them_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    files = bad_files(root)
    out = tmp_path / "m.tsv"
    res = run(root, "-o", out, "--min-duration", "0.1")
    assert res.exit_code == 0, res.stderr
    assert "left out 4 file(s)" in res.stderr
    for p in files.values():
        assert str(p.absolute()) in res.stderr
    assert [u.utt_id for u in read_manifest(out)] == ["spk1/s/good.wav", "spk2/s/good.wav"]
    assert "2 utterances, 2 speakers" in res.stderr


def test_roots_that_collide_get_their_folder_name_as_prefix(tmp_path: Path) -> None:
    tone(tmp_path / "a/spk1/s/1.wav", 0.2)
    tone(tmp_path / "b/spk1/s/1.wav", 0.2)
    tone(tmp_path / "c/spk9/s/1.wav", 0.2)
    utts, _ = scan([tmp_path / "a", tmp_path / "b"])
    assert [u.utt_id for u in utts] == ["a/spk1/s/1.wav", "b/spk1/s/1.wav"]
    utts, _ = scan([tmp_path / "a", tmp_path / "c", tmp_path / "a"])  # no collision; a twice is taken once
    assert [u.utt_id for u in utts] == ["spk1/s/1.wav", "spk9/s/1.wav"]
    tone(tmp_path / "x/a/spk1/s/1.wav", 0.2)
    with pytest.raises(InputError, match="not unique"):
        merge_roots([(tmp_path / "a", scan(tmp_path / "a")[0]), (tmp_path / "x/a", scan(tmp_path / "x/a")[0])])


# --- Kaldi -----------------------------------------------------------------------------------------


def test_kaldi_round_trip(tmp_path: Path) -> None:
    utts, _ = scan(_vox(tmp_path / "audio"))
    write_kaldi_dir(utts, tmp_path / "kd")
    assert (tmp_path / "kd/spk2utt").read_text().splitlines() == [
        "spkA spkA/s1/1.wav spkA/s2/2.wav",
        "spkB spkB/s1/1.wav",
    ]
    assert not (tmp_path / "kd/segments").exists()
    assert read_kaldi_dir(tmp_path / "kd") == utts


def test_kaldi_round_trip_with_segments(tmp_path: Path) -> None:
    long = tone(tmp_path / "rec/meeting one.wav", 3.0)
    other = tone(tmp_path / "rec2/call.wav", 2.0)
    utts = [
        Utterance("call-0000", str(other), "bob", 1.5, SR, start=0.5, end=2.0),
        Utterance("m1-0000", str(long), "alice", 1.0, SR, start=0.0, end=1.0),
        Utterance("m1-0001", str(long), "bob", 1.25, SR, start=1.5, end=2.75),
    ]
    write_kaldi_dir(utts, tmp_path / "kd")
    assert (tmp_path / "kd/segments").read_text().splitlines() == [
        "call-0000 call 0.500 2.000",
        "m1-0000 meeting_one 0.000 1.000",
        "m1-0001 meeting_one 1.500 2.750",
    ]
    assert read_kaldi_dir(tmp_path / "kd") == utts
    # An end of -1 runs to the end of the recording.
    (tmp_path / "kd/segments").write_text("m1-0001 meeting_one 2.5 -1\n")
    (back,) = read_kaldi_dir(tmp_path / "kd")
    assert back.duration == pytest.approx(0.5) and back.start == 2.5 and back.end is None


def test_kaldi_import_relative_paths_and_missing_utt2spk(tmp_path: Path) -> None:
    kd = tmp_path / "kd"
    tone(kd / "wavs/u1.wav", 0.3)
    (kd / "wav.scp").write_text("u1 wavs/u1.wav\n")
    (back,) = read_kaldi_dir(kd)
    assert back.path == str((kd / "wavs/u1.wav").absolute()) and back.speaker == "" and back.duration == 0.3


@pytest.mark.parametrize(
    "line, words",
    [
        ("u2 sox /x/y.sph -t wav - |", "piped"),
        ("u2 /data/raw.ark:1234", "ark offset"),
    ],
)
def test_kaldi_import_refuses_pipes_and_ark_offsets(tmp_path: Path, line: str, words: str) -> None:
    wav = tone(tmp_path / "u1.wav", 0.2)
    (tmp_path / "kd").mkdir()
    (tmp_path / "kd/wav.scp").write_text(f"u1 {wav}\n{line}\n")
    with pytest.raises(InputError, match=f"line 2: {words}") as err:
        load_kaldi_dir(tmp_path / "kd")
    assert err.value.path == str(tmp_path / "kd/wav.scp")
    res = run(tmp_path / "kd", "-o", tmp_path / "m.tsv")
    assert res.exit_code == 2 and "line 2" in res.stderr and not (tmp_path / "m.tsv").exists()


def test_kaldi_export_refuses_spaces_and_writes_nothing(tmp_path: Path) -> None:
    wav = tone(tmp_path / "a.wav", 0.2)
    with pytest.raises(InputError, match="whitespace"):
        write_kaldi_dir([Utterance("a b", str(wav), "s", 0.2, SR)], tmp_path / "kd")
    assert not (tmp_path / "kd").exists()


def test_cli_imports_a_kaldi_dir_and_exports_one(tmp_path: Path) -> None:
    kd = tmp_path / "kd"
    utts, _ = scan(_vox(tmp_path / "audio"))
    write_kaldi_dir(utts, kd)
    res = run(kd, "-o", tmp_path / "m.tsv", "--export-kaldi", tmp_path / "kd2")
    assert res.exit_code == 0, res.stderr
    assert read_manifest(tmp_path / "m.tsv") == utts
    assert (tmp_path / "kd2/utt2spk").read_text() == (kd / "utt2spk").read_text()


def _vox(root: Path) -> Path:
    tone(root / "spkA/s1/1.wav", 0.3)
    tone(root / "spkA/s2/2.wav", 0.4)
    tone(root / "spkB/s1/1.wav", 0.5)
    return root


# --- CLI: trials, stdout, errors -------------------------------------------------------------------


def test_cli_trials_counts_and_exclusion(tiny_corpus: Path, tmp_path: Path) -> None:
    man, tri = tmp_path / "m.tsv", tmp_path / "t.txt"
    res = run(tiny_corpus, "-o", man, "--trials", tri, "--targets", "12", "--nontargets", "30", "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["utterances"] == 24 and summary["speakers"] == 6 and summary["skipped"] == 0
    assert summary["targets"] == 12 and summary["nontargets"] == 30
    utts = by_id(read_manifest(man))
    trials = read_trials(tri)
    assert trials.n_target == 12 and trials.n_nontarget == 30
    for e, t, lab in zip(trials.enroll, trials.test, trials.labels, strict=True):
        assert (utts[e].speaker == utts[t].speaker) == bool(lab)

    # Trials from an existing manifest alone, speaker-disjoint from a "training" manifest.
    train = [u for u in utts.values() if u.speaker in ("spk000", "spk001")]
    write_manifest(train, tmp_path / "train.tsv")
    before = man.read_text()
    res = run(
        man,
        "--trials",
        tmp_path / "t2.txt",
        "--targets",
        "5",
        "--nontargets",
        "5",
        "--exclude-speakers-of",
        tmp_path / "train.tsv",
        "--trials-format",
        "kaldi",
    )
    assert res.exit_code == 0, res.stderr
    assert man.read_text() == before
    assert (tmp_path / "t2.txt").read_text().split("\n")[0].split()[2] in ("target", "nontarget")
    trials = read_trials(tmp_path / "t2.txt")
    assert len(trials) == 10
    used = {utts[i].speaker for i in trials.enroll + trials.test}
    assert used.isdisjoint({"spk000", "spk001"})


def test_cli_default_trial_counts(tmp_path: Path) -> None:
    res = run(_vox(tmp_path / "audio"), "--trials", "-")
    assert res.exit_code == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == [
        "0 spkA/s1/1.wav spkB/s1/1.wav",
        "0 spkA/s2/2.wav spkB/s1/1.wav",
        "1 spkA/s1/1.wav spkA/s2/2.wav",
    ]


def test_cli_manifest_to_stdout(tmp_path: Path) -> None:
    root = _vox(tmp_path / "audio")
    res = run(root, "-o", "-")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split("\t") == ["utt_id", "path", "speaker", "duration", "sample_rate"]
    assert [ln.split("\t")[0] for ln in lines[1:]] == ["spkA/s1/1.wav", "spkA/s2/2.wav", "spkB/s1/1.wav"]
    assert "3 utterances, 2 speakers" in res.stderr


@pytest.mark.parametrize(
    "make_root, problem",
    [
        (lambda tmp: tmp / "missing", "no such file or folder"),
        (lambda tmp: (tmp / "silent").mkdir() or tmp / "silent", "no audio files"),
    ],
)
def test_cli_bad_root_exits_2_and_keeps_output(tmp_path: Path, make_root, problem: str) -> None:
    root = make_root(tmp_path)
    good = _vox(tmp_path / "audio")
    out = tmp_path / "m.tsv"
    out.write_text("precious\n")
    res = run(good, root, "-o", out)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(root) in lines[0] and problem in lines[0]
    assert out.read_text() == "precious\n"


def test_cli_usage_errors(tmp_path: Path) -> None:
    root = _vox(tmp_path / "audio")
    for args in (["--targets", "3", "-o", "-"], [], ["-o", "-", "--json"], ["--layout", "regex", "-o", "-"]):
        res = run(root, *args)
        assert res.exit_code == 2, args
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


# --- real speech -----------------------------------------------------------------------------------


def test_librispeech_samples_auto(tmp_path: Path) -> None:
    corpus = CORPORA / "librispeech-samples"
    if not (corpus / "test-other").is_dir():
        pytest.skip(f"real-speech corpus not found at {corpus} (set SPKEMB_CORPORA to the corpora folder)")
    res = run(corpus, "-o", tmp_path / "m.tsv", "--json")
    assert res.exit_code == 0, res.stderr
    utts = read_manifest(tmp_path / "m.tsv")
    for subset, n_utts, n_spk in (("test-other/", 100, 10), ("train-clean-100/", 251, 251)):
        sub = [u for u in utts if u.utt_id.startswith(subset)]
        assert len(sub) == n_utts and len({u.speaker for u in sub}) == n_spk
    assert by_id(utts)["test-other/1688/1688-142285-0001.flac"].speaker == "1688"
    ids = {u.utt_id for u in utts}
    trials = read_trials(corpus / "trials-test-other.txt")
    assert set(trials.enroll + trials.test) <= ids


# --- the core job, without the CLI -----------------------------------------------------------------


def test_prepare_manifest_core_callbacks_defaults_and_errors(tmp_path: Path) -> None:
    from spkemb.data.prepare import classify_inputs, draw_trials, prepare_manifest

    a, b = _vox(tmp_path / "a"), _vox(tmp_path / "b")
    (a / "spkB/s1/zero.wav").write_bytes(b"")
    steps: list[tuple[Path, int, int | None]] = []
    reads: list[tuple[list, bool]] = []
    man, tri = tmp_path / "out/m.tsv", tmp_path / "out/t.txt"
    res = prepare_manifest(
        [a, b], output=man, trials=tri, on_progress=lambda *s: steps.append(s), on_read=lambda *r: reads.append(r)
    )
    assert [s for s in steps if s[2] is None] == [(a, 0, None), (b, 0, None)]
    assert reads == [([(str((a / "spkB/s1/zero.wav").absolute()), "empty file (0 bytes)")], True)]
    assert [u.utt_id for u in read_manifest(man)] == [u.utt_id for u in res.utterances]
    assert res.utterances[0].utt_id == "a/spkA/s1/1.wav" and res.speakers == 2
    assert res.hours == pytest.approx(2 * 1.2 / 3600)
    # Default counts: every target pair (4 of spkA, 2 of spkB: 6 + 1), non-targets capped by what exists.
    assert res.trials is not None and (res.trials.n_target, res.trials.n_nontarget) == (7, 8)
    assert read_trials(tri).n_target == 7
    assert draw_trials(res.utterances, seed=1).n_nontarget == 8
    with pytest.raises(InputError, match="after `exclude_speakers_of`"):
        draw_trials(res.utterances, excluded={"spkB"})
    with pytest.raises(InputError, match="sole input"):
        classify_inputs([man, a])
    assert [s.kind for s in classify_inputs([man])] == ["manifest"]


@pytest.mark.parametrize("kwargs, message", [
    ({"min_duration": -1.0}, "`min_duration` must be >= 0, got -1"),
    ({"min_duration": float("nan")}, "`min_duration` must be >= 0, got nan"),
    ({"workers": 0}, "`workers` must be >= 1, got 0"),
    ({"trials": "T", "targets": -1}, "`targets` must be >= 0, got -1"),
    ({"trials": "T", "nontargets": -2}, "`nontargets` must be >= 0, got -2"),
    ({"targets": 3}, "go with `trials` OUT"),
    ({"nontargets": 3}, "go with `trials` OUT"),
    ({"exclude_speakers_of": iter(["train.tsv"])}, "go with `trials` OUT"),
])  # fmt: skip
def test_prepare_manifest_refuses_bad_arguments_before_reading(tmp_path: Path, kwargs: dict, message: str) -> None:
    from spkemb.data.prepare import prepare_manifest

    root = _vox(tmp_path / "audio")
    if "trials" in kwargs:
        kwargs = {**kwargs, "trials": tmp_path / "t.txt"}
    steps: list = []
    with pytest.raises(InputError, match=re.escape(message)):
        prepare_manifest(
            [root],
            output=tmp_path / "m.tsv",
            export_kaldi=tmp_path / "kaldi",
            on_progress=lambda *s: steps.append(s),
            **kwargs,
        )
    assert steps == [] and sorted(p.name for p in tmp_path.iterdir()) == ["audio"]


def test_prepare_manifest_bad_trial_format_writes_nothing(tmp_path: Path) -> None:
    from spkemb.data.prepare import prepare_manifest

    root = _vox(tmp_path / "audio")
    with pytest.raises(InputError, match="unknown trial format"):
        prepare_manifest(
            [root],
            output=tmp_path / "m.tsv",
            trials=tmp_path / "t.txt",
            trials_format="nist",
            export_kaldi=tmp_path / "kaldi",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio"]


@pytest.mark.parametrize("args, message", [
    (["--min-duration", "-1"], "--min-duration must be >= 0"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--workers", "0"], "--threads must be >= 1"),  # the old name, hidden
    (["--trials", "T", "--targets", "-1"], "--targets must be >= 0"),
    (["--exclude-speakers-of", "train.tsv"], "go with --trials OUT"),
])  # fmt: skip
def test_cli_bad_arguments_are_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    root = _vox(tmp_path / "audio")
    args = [str(tmp_path / "t.txt") if a == "T" else a for a in args]
    res = run(root, "-o", tmp_path / "m.tsv", *args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio"]
