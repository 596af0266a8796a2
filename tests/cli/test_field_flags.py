"""The core names option fields (`` `n_clusters` ``), the CLI shows its own flags (issue 17 item 2):
a refusal of cluster, score and prepare is one line on stderr naming the flag, exit 2, and the same
refusal from Python names the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.cli.errors import cli_message, flag_text
from spkemb.cli.params import command_flags
from spkemb.embeddings.store import write_embeddings
from spkemb.errors import InputError

runner = CliRunner()


def _refusal(args: list[str]) -> str:
    """The one stderr line of a refused command (exit 2, no traceback, no field quotes left)."""
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("spkemb: error: "), r.stderr
    assert "`" not in lines[0] and "Traceback" not in r.output, lines[0]
    return lines[0]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    ids = [f"s{i % 3}/u{i}.wav" for i in range(12)]
    return write_embeddings(tmp_path / "emb.h5", ids, rng.normal(size=(12, 8)), speakers=[i[:2] for i in ids])


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--method", "kmeans"], "--method kmeans needs --n-clusters"),
        (["--method", "ahc", "--n-clusters", "2", "--n-init-clusters", "3"], "--n-init-clusters is for --method two"),
        (["--method", "kmeans", "--n-clusters", "2", "--p-neighbours", "3"], "--p-neighbours is for --method spectral"),
        (["--method", "spectral", "--n-clusters", "2", "--max-clusters", "0"], "--max-clusters must be at least 1"),
        (["--method", "kmeans", "--n-clusters", "2", "--kmeans", "sklearn", "--device", "cuda"], "not --device cuda"),
    ],
)  # fmt: skip
def test_cluster_refusals_name_its_flags(store: Path, tmp_path: Path, args: list[str], line: str) -> None:
    got = _refusal(["cluster", str(store), "-o", str(tmp_path / "l.tsv"), *args])
    assert line in got, got
    assert not (tmp_path / "l.tsv").exists()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--cohort", "EMB"], "--cohort has no effect without --norm"),
        (["--train", "EMB", "--plda", "EMB", "--backend", "plda"], "give --train TRAIN.h5 (to train a PLDA model) or"),
        (["--quality", "duration"], "--quality feeds calibration: use it with --fit-calibration or --calibration"),
        (["--fit-calibration", "c.json", "--quality", "duration"], "--quality duration needs --manifest FILE"),
        (["--p-target", "1.5"], "--p-target must be strictly between 0 and 1, got 1.5"),
        (["--norm", "znorm"], "--norm znorm needs a cohort store (--cohort COHORT.h5)"),
        (["--norm", "asnorm", "--top-k", "0"], "--top-k must be at least 1, got 0"),
    ],
)  # fmt: skip
def test_score_refusals_name_its_flags(store: Path, tmp_path: Path, args: list[str], line: str) -> None:
    trials = tmp_path / "trials.txt"
    trials.write_text("1 s0/u0.wav s0/u3.wav\n0 s0/u0.wav s1/u1.wav\n")
    args = [str(store) if a == "EMB" else str(tmp_path / a) if a.endswith(".json") else a for a in args]
    got = _refusal(["score", str(trials), str(store), *args])
    assert line in got, got
    assert "--top-k: --top-k" not in got  # (the field's name once)


def test_score_without_embeddings_names_the_scores_flag(tmp_path: Path) -> None:
    scores = tmp_path / "s.txt"
    scores.write_text("a b 0.5 target\n")
    got = _refusal(["score", "--scores", str(scores), "--lda-dim", "3"])
    assert "--lda-dim needs TRIALS EMB.h5 (the scores of a --scores file are taken as they are)" in got, got


def _folder(root: Path) -> Path:
    for spk in ("a", "b"):
        (root / spk).mkdir(parents=True)
        sf.write(root / spk / "x.wav", np.zeros(1600), 16000)
    return root


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--layout", "voxceleb", "--speaker-level", "2"], "--speaker-level replaces the layout's speaker rule"),
        (["--layout", "voxceleb", "--speaker-level", "2"], "give it without --layout voxceleb"),
        (["--layout", "kaldi", "--speaker-regex", "(x)"], "--speaker-regex is for audio folders, not --layout kaldi"),
        (["--layout", "regex"], "--layout regex needs --speaker-regex RE"),
        (["--id-prefix", "a b"], "--id-prefix 'a b': give a relative folder path"),
        (["--segment", "2", "--segment-min", "3"], "--segment-min must be in (0, --segment 2], got 3"),
        (["--targets", "3"], "--targets, --nontargets and --exclude-speakers-of go with --trials OUT"),
    ],
)  # fmt: skip
def test_prepare_refusals_name_its_flags(tmp_path: Path, args: list[str], line: str) -> None:
    got = _refusal(["prepare", str(_folder(tmp_path / "audio")), "-o", str(tmp_path / "m.tsv"), *args])
    assert line in got, got
    assert not (tmp_path / "m.tsv").exists()


def test_prepare_problems_name_the_flag(tmp_path: Path) -> None:
    """A file a speaker rule cannot place is a problem line (not an error) that names the flag."""
    root = _folder(tmp_path / "audio")
    for spk in ("c", "d"):
        (root / spk / "s" / "t").mkdir(parents=True)
        sf.write(root / spk / "s" / "t" / "x.wav", np.zeros(1600), 16000)
    r = runner.invoke(app, ["prepare", str(root), "-o", str(tmp_path / "m.tsv"), "--speaker-level", "3"])
    assert r.exit_code == 0, r.output
    assert "only 1 folder(s) above the file (--speaker-level 3)" in r.output, r.output
    assert "`" not in r.output


def test_the_core_names_fields_and_each_command_maps_them() -> None:
    from spkemb.cli.cluster import cluster
    from spkemb.cli.prepare import prepare
    from spkemb.cluster import ClusterOptions

    with pytest.raises(InputError) as err:
        ClusterOptions("kmeans", kmeans="sklearn", device="cuda", n_clusters=2).resolved(10)
    assert err.value.message == "`kmeans` sklearn runs on the CPU only, not `device` cuda"
    assert cli_message(err.value, command_flags(cluster)) == "--kmeans sklearn runs on the CPU only, not --device cuda"
    flags = command_flags(prepare)
    assert flags["workers"] == "--threads" and flags["num_workers"] == "--workers"  # prepare.threads sets workers
    assert flag_text("`workers` must be >= 1", flags) == "--threads must be >= 1"
    assert flag_text("`no_such_field` x", flags) == "no_such_field x"  # an unmapped field loses its quotes


def test_the_training_reporter_names_the_commands_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from spkemb.cli.finetune import finetune
    from spkemb.cli.report import CliReporter

    CliReporter(flags=command_flags(finetune)).message(
        "no `encoder_kwargs.frontend_weights` and no `init` (`method_options` x=1)", warning=True
    )
    err = capsys.readouterr().err
    assert "no --frontend-weights and no --init (--method-opt x=1)" in err, err
