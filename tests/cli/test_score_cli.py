"""`spkemb score` end to end through the Typer app, on tiny stores written in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.embeddings.store import write_embeddings
from spkemb.scoring.metrics import summarize

runner = CliRunner()

N_SPK, PER_SPK, DIM = 4, 3, 8


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    """Store of 4 speakers x 3 utterances (clustered vectors), a cohort store, trial lists in both formats."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(N_SPK, DIM)) * 3
    ids, vecs = [], []
    for s in range(N_SPK):
        for u in range(PER_SPK):
            ids.append(f"spk{s}/sess/{u:05d}.wav")
            vecs.append(centres[s] + rng.normal(size=DIM))
    emb = tmp_path / "emb.h5"
    write_embeddings(emb, ids, np.array(vecs), speakers=[i.split("/")[0] for i in ids])
    cohort = tmp_path / "cohort.h5"
    write_embeddings(cohort, [f"c{i}" for i in range(20)], rng.normal(size=(20, DIM)))
    vox, kaldi, plain = [], [], []
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            lab = int(ids[i][:4] == ids[j][:4])
            vox.append(f"{lab} {ids[i]} {ids[j]}")
            kaldi.append(f"{ids[i]} {ids[j]} {'target' if lab else 'nontarget'}")
            plain.append(f"{ids[i]} {ids[j]}")
    paths = {"emb": emb, "cohort": cohort}
    for name, lines in (("vox", vox), ("kaldi", kaldi), ("plain", plain)):
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_text("\n".join(lines) + "\n")
    return paths


def _score_lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()]


def test_both_labelled_formats_give_the_same_scores(setup: dict[str, Path]) -> None:
    out = {}
    for fmt in ("vox", "kaldi"):
        r = runner.invoke(app, ["score", str(setup[fmt]), str(setup["emb"])])
        assert r.exit_code == 0, r.output
        rows = _score_lines(r.stdout)
        assert len(rows) == 66 and all(len(row) == 4 for row in rows)
        assert {row[3] for row in rows} == {"target", "nontarget"}
        assert "EER" in r.stderr and "minDCF" in r.stderr
        out[fmt] = rows
    assert out["vox"] == out["kaldi"]
    # The scores file is itself a labelled trial list: its EER matches the summary.
    scores = np.array([float(r[2]) for r in out["vox"]])
    labels = np.array([r[3] == "target" for r in out["vox"]], dtype=np.int8)
    assert summarize(scores, labels)["targets"] == N_SPK * PER_SPK * (PER_SPK - 1) // 2


def test_unlabelled_trials_from_stdin(setup: dict[str, Path]) -> None:
    r = runner.invoke(app, ["score", "-", str(setup["emb"])], input=setup["plain"].read_text())
    assert r.exit_code == 0, r.output
    rows = _score_lines(r.stdout)
    assert len(rows) == 66 and all(len(row) == 3 for row in rows)
    assert "EER" not in r.stderr


def test_json_summary_and_output_file(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sub" / "scores.txt"
    r = runner.invoke(app, ["score", str(setup["vox"]), str(setup["emb"]), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)  # exactly one JSON object, nothing else on stdout
    for key in ("eer", "mindcf_p0.01", "mindcf_p0.05", "targets", "nontargets", "trials", "skipped"):
        assert key in summary
    assert summary["trials"] == 66 and summary["skipped"] == 0
    assert summary["targets"] + summary["nontargets"] == 66
    rows = _score_lines(out.read_text())
    assert len(rows) == 66 and all(len(row) == 4 for row in rows)
    scores = np.array([float(row[2]) for row in rows])
    labels = np.array([row[3] == "target" for row in rows], dtype=np.int8)
    assert summary["eer"] == pytest.approx(summarize(scores, labels)["eer"], abs=1e-2)
    # --json without -o: the summary only.
    r = runner.invoke(app, ["score", str(setup["vox"]), str(setup["emb"]), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["trials"] == 66


def test_malformed_line_is_one_clear_error_and_keeps_output(setup: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    lines = setup["vox"].read_text().splitlines()
    lines[2] = "1 only-two-fields-and-extra garbage here"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.txt"
    out.write_text("precious\n")
    r = runner.invoke(app, ["score", str(bad), str(setup["emb"]), "-o", str(out)])
    assert r.exit_code == 2
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1, r.stderr
    assert str(bad) in err[0] and "line 3" in err[0] and "Traceback" not in r.stderr
    assert out.read_text() == "precious\n"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left


def test_missing_ids_fail_unless_skipped(setup: dict[str, Path], tmp_path: Path) -> None:
    trials = tmp_path / "t.txt"
    trials.write_text(setup["vox"].read_text() + "1 ghost1.wav spk0/sess/00000.wav\n0 ghost2.wav ghost1.wav\n")
    out = tmp_path / "scores.txt"
    out.write_text("precious\n")
    r = runner.invoke(app, ["score", str(trials), str(setup["emb"]), "-o", str(out)])
    assert r.exit_code == 2
    assert "2 trial ids are not in" in r.stderr and "ghost1.wav" in r.stderr and "--skip-missing" in r.stderr
    assert out.read_text() == "precious\n"
    r = runner.invoke(app, ["score", str(trials), str(setup["emb"]), "--skip-missing", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["skipped"] == 2 and summary["trials"] == 66


@pytest.mark.parametrize("norm", ["mean", "standardize", "znorm", "tnorm", "snorm", "asnorm"])
def test_norms_run_with_a_cohort(setup: dict[str, Path], norm: str) -> None:
    top_k = ["--top-k", "5"] if norm == "asnorm" else []
    r = runner.invoke(
        app,
        [
            "score",
            str(setup["vox"]),
            str(setup["emb"]),
            "--cohort",
            str(setup["cohort"]),
            "--norm",
            norm,
            *top_k,
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["norm"] == norm and summary["eer"] < 20
    for key in ("actdcf_p0.01", "actdcf_p0.05", "cllr", "mincllr"):
        assert isinstance(summary[key], float)


def test_usage_errors(setup: dict[str, Path], tmp_path: Path) -> None:
    r = runner.invoke(app, ["score", str(setup["vox"]), str(setup["emb"]), "--norm", "asnorm"])
    assert r.exit_code == 2 and "--cohort" in r.stderr
    r = runner.invoke(app, ["score", str(setup["vox"]), str(tmp_path / "nope.h5")])
    assert r.exit_code == 2 and "nope.h5" in r.stderr and "Traceback" not in r.stderr
    r = runner.invoke(app, ["score", str(setup["vox"]), str(setup["emb"]), "--cohort", str(setup["cohort"])])
    assert r.exit_code == 2


def test_score_trials_core_without_the_cli() -> None:
    from spkemb.data.trials import Trials
    from spkemb.embeddings.store import EmbeddingSet
    from spkemb.errors import InputError
    from spkemb.scoring.trial_scoring import ScoreOptions, score_trials

    store = EmbeddingSet(["a", "b", "c"], np.array([[1, 0], [1, 0.1], [0, 1]], dtype=np.float32))
    trials = Trials(["a", "a", "x"], ["b", "c", "a"], np.array([1, 0, 1], dtype=np.int8))
    res = score_trials(trials, store, ScoreOptions(skip_missing=True))
    assert res.skipped == 1 and res.missing == ["x"]
    assert res.summary()["eer"] == 0.0
    assert [line.split()[3] for line in res.lines().splitlines()] == ["target", "nontarget"]
    with pytest.raises(InputError, match="not in"):
        score_trials(trials, store)
    with pytest.raises(InputError, match="asnorm needs"):
        score_trials(trials, store, ScoreOptions(norm="asnorm"))


def _one_error_line(r) -> str:  # noqa: ANN001
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_bad_cohorts_are_one_line_and_write_nothing(setup: dict[str, Path], tmp_path: Path) -> None:
    wide, empty = tmp_path / "wide.h5", tmp_path / "empty.h5"
    write_embeddings(wide, [f"c{i}" for i in range(10)], np.zeros((10, DIM + 2)))
    import h5py

    with h5py.File(empty, "w") as f:  # write_embeddings cannot make an empty store; extraction could
        f.create_dataset("utt_id", shape=(0,), dtype=h5py.string_dtype())
        f.create_dataset("embedding", shape=(0, DIM), dtype="float32")
        f.attrs.update({"format": "spkemb-embeddings", "format_version": 1, "complete": True})
    out, det = tmp_path / "scores.txt", tmp_path / "det.png"
    out.write_text("precious\n")
    for cohort, norm, message in (
        (wide, "asnorm", "-d"),
        (wide, "standardize", "-d"),
        (empty, "snorm", "empty"),
        (empty, "mean", "empty"),
    ):
        line = _one_error_line(
            runner.invoke(
                app,
                [
                    "score",
                    str(setup["vox"]),
                    str(setup["emb"]),
                    "--cohort",
                    str(cohort),
                    "--norm",
                    norm,
                    "-o",
                    str(out),
                    "--det",
                    str(det),
                ],
            )
        )
        assert str(cohort) in line and message in line
        assert out.read_text() == "precious\n" and not det.exists()


def test_scores_in_metrics_out(setup: dict[str, Path], tmp_path: Path) -> None:
    scores = tmp_path / "scores.txt"
    r = runner.invoke(app, ["score", str(setup["vox"]), str(setup["emb"]), "-o", str(scores), "--json"])
    assert r.exit_code == 0, r.output
    computed = json.loads(r.stdout)
    r = runner.invoke(app, ["score", "--scores", str(scores), "--json"])
    assert r.exit_code == 0, r.output
    from_file = json.loads(r.stdout)
    for key in ("eer", "mindcf_p0.01", "cllr", "mincllr", "targets", "nontargets"):
        assert from_file[key] == pytest.approx(computed[key], abs=1e-4)
    assert from_file["scores_file"] == str(scores) and from_file["output"] is None
    # Scores in, (re)written only with -o; stdin works too.
    r = runner.invoke(app, ["score", "--scores", "-", "-o", "-"], input=scores.read_text())
    assert r.exit_code == 0 and r.stdout == scores.read_text()
    # The computed system and another toolkit's file side by side.
    r = runner.invoke(
        app,
        [
            "score",
            str(setup["vox"]),
            str(setup["emb"]),
            "--scores",
            str(scores),
            "--name",
            "mine",
            "--json",
            "-o",
            str(tmp_path / "again.txt"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert [s["name"] for s in json.loads(r.stdout)["systems"]] == ["mine", "scores.txt"]


def test_usage_errors_of_the_new_options(setup: dict[str, Path], tmp_path: Path) -> None:
    scores = tmp_path / "s.txt"
    scores.write_text("a b 0.5 target\nc d 0.1 nontarget\n")
    cases = [
        (["score", str(setup["vox"])], "EMB.h5 is missing"),
        (["score"], "nothing to score"),
        (["score", str(setup["vox"]), str(setup["emb"]), "--top-k", "5"], "--top-k is for --norm asnorm"),
        (
            [
                "score",
                str(setup["vox"]),
                str(setup["emb"]),
                "--cohort",
                str(setup["cohort"]),
                "--norm",
                "znorm",
                "--top-k",
                "5",
            ],
            "--top-k is for --norm asnorm",
        ),
        (["score", "--scores", str(scores), "--norm", "snorm"], "need TRIALS EMB.h5"),
        (["score", "--scores", str(scores), "--cohort", str(setup["cohort"])], "needs TRIALS EMB.h5"),
        (["score", "--scores", str(setup["plain"])], "not a scores file"),
        (["score", str(setup["vox"]), str(setup["emb"]), "--p-target", "1.5"], "--p-target"),
        (["score", str(setup["vox"]), str(setup["emb"]), "--quality", "duration"], "--quality feeds calibration"),
        (
            [
                "score",
                str(setup["vox"]),
                str(setup["emb"]),
                "-o",
                str(tmp_path / "x.png"),
                "--det",
                str(tmp_path / "x.png"),
            ],
            "same file",
        ),
        (["score", str(setup["vox"]), str(setup["emb"]), "-o", str(setup["vox"])], "input"),
    ]
    for args, message in cases:
        line = _one_error_line(runner.invoke(app, args))
        assert message in line, (args, line)


def test_a_cohort_of_another_encoder_is_refused_unless_allowed(tmp_path: Path) -> None:
    """Issue 13: stores carry encoder_config / checkpoint_sha256; mixing encoders is refused."""
    rng = np.random.default_rng(0)
    ids = [f"u{i}" for i in range(6)]
    store, cohort = tmp_path / "e.h5", tmp_path / "c.h5"
    write_embeddings(store, ids, rng.standard_normal((6, 4)).astype(np.float32), attrs={"checkpoint_sha256": "aaa"})
    write_embeddings(
        cohort,
        [f"c{i}" for i in range(5)],
        rng.standard_normal((5, 4)).astype(np.float32),
        attrs={"checkpoint_sha256": "bbb"},
    )
    trials = tmp_path / "t.txt"
    trials.write_text("1 u0 u1\n0 u0 u2\n")
    base = ["score", str(trials), str(store), "--cohort", str(cohort), "--norm", "asnorm"]
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 2 and "another encoder" in res.output and "c.h5" in res.output
    res = CliRunner().invoke(app, [*base, "--allow-mixed-encoders"])
    assert res.exit_code == 0, res.output
    assert "exceeds the cohort's 5 embeddings" in res.output


def _vox_ids() -> list[str]:
    """VoxCeleb-like ids: the same session and file names under every speaker."""
    return [f"id1000{s}/sess{k}/{u:05d}.wav" for s in range(5) for k in range(3) for u in range(4)]


def test_missing_trial_ids_name_a_store_id_and_the_fix() -> None:
    from spkemb.scoring.scores_io import id_hint

    ids = _vox_ids()
    # The trial ids carry a prefix (the store's first id with the same file name is another speaker's).
    hint = id_hint([f"vox1/wav/{u}" for u in ids[40:50]], ids)
    assert hint.startswith("the trial ids carry the prefix 'vox1/wav/' that the store's ids lack"), hint
    assert "'vox1/wav/id10003/sess1/00000.wav' is 'id10003/sess1/00000.wav' there" in hint
    assert "strip it from the trial list, or prepare the audio with --id-prefix vox1/wav " in hint
    # The store's ids carry a prefix: the fix is the deeper folder (or the trial ids), never --id-prefix.
    for prefix in ("wav/", "vox1/wav/"):
        hint = id_hint(ids[40:50], [prefix + u for u in ids])
        assert hint.startswith(f"the store's ids carry the prefix {prefix!r} that the trial ids lack"), hint
        assert f"'id10003/sess1/00000.wav' is '{prefix}id10003/sess1/00000.wav' there" in hint
        assert f"prepare the folder ROOT/{prefix.rstrip('/')} instead of ROOT" in hint
        assert f"put {prefix!r} before the trial list's ids" in hint and "--id-prefix" not in hint
    # A prefix explains the missing ids only when it is common to them.
    assert "prefix 'vox1/'" in id_hint(["vox1/" + ids[0], "vox1/" + ids[1], "ghost.wav"], ids)
    for missing, store in (
        (["vox1/" + ids[0], "ghost1.wav", "ghost2.wav"], ids),
        (["sess0/00000.wav"], ids),  # every speaker has one: no single store id
        (["id10009/sess0/00000.wav"], ids),
        (["other.wav"], ids),
    ):
        hint = id_hint(missing, store)
        assert hint.startswith("no prefix common to the missing ids explains them; store ids look like"), hint
        assert "carry the prefix" not in hint and "`skip_missing`" in hint


@pytest.mark.parametrize("side", ["trial", "store"])
def test_a_prefix_on_one_side_is_named_with_its_fix(tmp_path: Path, side: str) -> None:
    ids = _vox_ids()
    store_ids = ids if side == "trial" else [f"wav/{u}" for u in ids]
    trial_ids = [f"vox1/wav/{u}" for u in ids] if side == "trial" else ids
    emb, trials, out = tmp_path / "emb.h5", tmp_path / "trials.txt", tmp_path / "scores.txt"
    write_embeddings(emb, store_ids, np.random.default_rng(0).normal(size=(len(ids), DIM)))
    trials.write_text("".join(f"{a} {b}\n" for a, b in zip(trial_ids[::-1], trial_ids, strict=True)))
    out.write_text("precious\n")
    line = _one_error_line(runner.invoke(app, ["score", str(trials), str(emb), "-o", str(out)]))
    assert f"{len(ids)} trial ids are not in the embedding store" in line
    if side == "trial":
        assert "the trial ids carry the prefix 'vox1/wav/'" in line and "--id-prefix vox1/wav " in line
    else:
        assert "the store's ids carry the prefix 'wav/'" in line and "ROOT/wav instead of ROOT" in line
        assert "--id-prefix" not in line
    assert out.read_text() == "precious\n"


def test_the_top_k_note_says_whose_top_k_exceeds_the_cohort(setup: dict[str, Path]) -> None:
    base = [
        "score",
        str(setup["vox"]),
        str(setup["emb"]),
        "--cohort",
        str(setup["cohort"]),
        "--norm",
        "asnorm",
        "--json",
    ]
    tail = "exceeds the cohort's 20 embeddings; all of them are used"
    for extra, note in (
        ([], f"note: the default --top-k 300 {tail}"),
        (["--top-k", "25"], f"note: --top-k 25 {tail}"),
        (["--top-k", "20"], None),
    ):
        r = runner.invoke(app, [*base, *extra])
        assert r.exit_code == 0, r.output
        notes = [line for line in r.stderr.splitlines() if "top-k" in line]
        assert notes == ([] if note is None else [note]), r.stderr
