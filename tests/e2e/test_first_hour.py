"""A new user's first hour (issue 13): progress in logs, work not redone, layouts that fool `auto`,
one-line usage errors and tidy help, a reproducible demo, man pages, busy machines, start-up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import typer
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.cli.common import LogProgress, console, progress_line
from spkemb.data.layouts import scan, speaker_folder_hints
from spkemb.embeddings.store import read_embeddings
from spkemb.utils.system import Busy, others_running, oversubscription

ROOT = Path(__file__).parents[2]
COMMANDS = ("prepare", "augment", "pretrain", "finetune", "extract", "cluster", "score")
runner = CliRunner()


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


# 1. Progress in logs ------------------------------------------------------------------------------


def test_log_progress_prints_at_the_interval_and_the_final_state(capsys: pytest.CaptureFixture[str]) -> None:
    with LogProgress(interval=0) as bar:  # interval 0: a line per update
        task = bar.add_task("augment", total=4, info="")
        for _ in range(4):
            bar.update(task, advance=1)
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split()[1] for ln in lines] == ["1/4", "2/4", "3/4", "4/4"]
    bar = LogProgress(interval=0)
    task = bar.add_task("extract", total=10, info="")
    bar.update(task, advance=1)
    bar.interval = 3600  # then nothing until the end, which is always shown
    for _ in range(9):
        bar.update(task, advance=1, info="x")
    bar.stop()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("extract: 1/10") and lines[1].startswith("extract: 10/10 (100%)")
    with LogProgress(interval=3600) as bar:  # a job done within the first interval prints nothing
        bar.update(bar.add_task("extract", total=3), completed=3)
    assert capsys.readouterr().err == ""


def test_progress_line_has_rate_and_eta() -> None:
    line = progress_line("extract", 40, 100, "0.01/0.03 h", elapsed=20.0, since=40)
    assert line == "extract: 40/100 (40%)  2.0/s  elapsed 0.3 min  eta 0.5 min  0.01/0.03 h"


def test_console_never_wraps_a_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    text = "word " * 60  # 300 characters; rich wraps at 80 columns when stderr is not a terminal
    console.print(text, highlight=False)
    assert capsys.readouterr().err.strip() == text.strip()


def test_non_tty_extract_writes_progress_lines_while_it_works(tmp_path: Path, manifest: Path) -> None:
    """stderr to a pipe (nohup, a batch job): plain lines as the work goes, not one at the end."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spkemb",
            "extract",
            "mfcc-stats",
            str(manifest),
            "-o",
            str(tmp_path / "e.h5"),
            "--max-batch",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(SPKEMB_LOG_INTERVAL="0"),
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # read as written, while the process runs
        lines.append(line.rstrip("\n"))
    assert proc.wait() == 0
    progress = [ln for ln in lines if ln.startswith("extract: ")]
    counts = [int(re.match(r"extract: (\d+)/24", ln).group(1)) for ln in progress]  # type: ignore[union-attr]
    assert counts[-1] == 24 and len([c for c in counts if 0 < c < 24]) >= 5
    assert all("/s" in ln and "eta" in ln for ln in progress)
    wrote = next(i for i, ln in enumerate(lines) if ln.startswith("wrote 24 embeddings"))
    assert lines.index(progress[1]) < wrote  # progress came before the end of the work


def test_non_tty_prepare_and_augment_print_progress_lines(tmp_path: Path, tiny_corpus: Path, manifest: Path) -> None:
    res = runner.invoke(
        app, ["prepare", str(tiny_corpus), "-o", str(tmp_path / "m.tsv")], env={"SPKEMB_LOG_INTERVAL": "0"}
    )
    assert res.exit_code == 0, res.output
    assert re.search(r"^reading headers: corpus\d*: 12/24 \(50%\)", res.stderr, re.M)
    res = runner.invoke(
        app,
        ["augment", str(manifest), "-o", str(tmp_path / "aug"), "--no-speed", "--gain"],
        env={"SPKEMB_LOG_INTERVAL": "0"},
    )
    assert res.exit_code == 0, res.output
    assert re.search(r"^augment: 12/24 \(50%\)  .*/s  elapsed", res.stderr, re.M)


# 2. Work that is done is not redone ---------------------------------------------------------------


def test_extract_onto_a_complete_store_returns_at_once(tmp_path: Path, manifest: Path) -> None:
    out = tmp_path / "e.h5"
    first = runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(out), "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["up_to_date"] is False
    stat = out.stat()
    again = runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(out), "--json", "--export", "npy"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["up_to_date"] is True and summary["embeddings"] == 24
    assert "already complete" in again.stderr and "--overwrite" in again.stderr
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)  # not rewritten

    store = read_embeddings(out)  # --export worked from the existing store
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), store.vectors)
    assert (tmp_path / "e.ids.txt").read_text().split() == store.ids
    redo = runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(out), "--json", "--overwrite"])
    assert json.loads(redo.stdout)["up_to_date"] is False and out.stat().st_ino != stat.st_ino


def test_a_complete_store_made_otherwise_is_refused_unless_overwrite(tmp_path: Path, manifest: Path) -> None:
    out = tmp_path / "e.h5"
    assert runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(out)]).exit_code == 0
    before = out.read_bytes()
    fewer = tmp_path / "fewer.tsv"
    fewer.write_text("".join(manifest.read_text().splitlines(keepends=True)[:-1]))
    for args, what in (
        ([str(fewer)], "other utterances"),
        ([str(manifest), "--chunk", "1"], "other extraction options"),
        ([str(manifest), "--shard", "0/2"], "other utterances (manifest or --shard)"),
    ):
        res = runner.invoke(app, ["extract", "mfcc-stats", *args, "-o", str(out)])
        assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.output
        assert "made with " + what in res.stderr and "--overwrite" in res.stderr
        assert out.read_bytes() == before  # untouched
    res = runner.invoke(app, ["extract", "mfcc-stats", str(fewer), "-o", str(out), "--json", "--overwrite"])
    assert res.exit_code == 0 and json.loads(res.stdout)["embeddings"] == 23
    assert json.loads(res.stdout)["up_to_date"] is False


def test_export_from_a_merged_store_does_not_embed_again(tmp_path: Path, manifest: Path) -> None:
    shards = [tmp_path / f"e.{i}.h5" for i in range(2)]
    for i, shard in enumerate(shards):
        assert (
            runner.invoke(
                app, ["extract", "mfcc-stats", str(manifest), "-o", str(shard), "--shard", f"{i}/2"]
            ).exit_code
            == 0
        )
    out = tmp_path / "e.h5"
    merge = [x for s in shards for x in ("--merge", str(s))]
    fewer = tmp_path / "fewer.tsv"  # a complete store of other utterances at -o: not replaced unasked
    fewer.write_text("".join(manifest.read_text().splitlines(keepends=True)[:-1]))
    assert runner.invoke(app, ["extract", "mfcc-stats", str(fewer), "-o", str(out)]).exit_code == 0
    res = runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(out), *merge])
    assert res.exit_code == 2 and "made with other utterances" in res.stderr and len(read_embeddings(out)) == 23
    assert (
        runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(out), *merge, "--overwrite"]).exit_code
        == 0
    )
    res = runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(out), "--export", "npy", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["up_to_date"] is True, res.output
    assert (tmp_path / "e.npy").is_file()


# 3. Layouts that fool `auto`, and ids of the full corpus ------------------------------------------


def _nested(root: Path, n: int = 12) -> Path:
    """``root/audio_data/{female,male}/S_NN/K.wav``: the speaker is the folder holding the files."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "audio_data" / ("female" if i % 2 else "male") / f"S_{i:02d}"
        folder.mkdir(parents=True)
        for k in range(2):
            sf.write(folder / f"{k}.wav", 0.1 * rng.standard_normal(1600).astype(np.float32), 16000)
    return root


def test_nested_speaker_folders_are_warned_about_in_one_line(tmp_path: Path) -> None:
    root = _nested(tmp_path / "corpus")
    res = runner.invoke(app, ["prepare", str(root), "-o", str(tmp_path / "m.tsv"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["speakers"] == 1
    warning = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1
    assert "'audio_data' is one speaker" in warning[0] and "12 folders below it" in warning[0]
    assert "--speaker-level parent" in warning[0] and "3 for S_01" in warning[0]
    for level in ("parent", "3"):
        res = runner.invoke(
            app, ["prepare", str(root), "-o", str(tmp_path / "m.tsv"), "--json", "--speaker-level", level]
        )
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["speakers"] == 12 and "warning" not in res.stderr
    utts, _ = scan(root, speaker_level="top")
    assert {u.speaker for u in utts} == {"audio_data"}


def test_the_warning_names_the_right_level_when_roots_collide(tmp_path: Path) -> None:
    """Two ROOTs with the same relative paths: ids get each ROOT's name in front, but --speaker-level
    counts folders below the ROOT, and so does the warning."""
    a, b = _nested(tmp_path / "a"), _nested(tmp_path / "b")
    res = runner.invoke(app, ["prepare", str(a), str(b), "-o", str(tmp_path / "m.tsv")])
    assert res.exit_code == 0, res.output
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings and all("3 for S_01" in w for w in warnings), warnings
    res = runner.invoke(
        app, ["prepare", str(a), str(b), "-o", str(tmp_path / "m.tsv"), "--json", "--speaker-level", "3"]
    )
    assert res.exit_code == 0 and json.loads(res.stdout)["speakers"] == 12, res.output


def test_naming_options_are_refused_for_a_manifest_and_several_roots(tmp_path: Path) -> None:
    root = _nested(tmp_path / "corpus", n=2)
    manifest = tmp_path / "m.tsv"
    assert runner.invoke(app, ["prepare", str(root), "-o", str(manifest)]).exit_code == 0
    res = runner.invoke(app, ["prepare", str(manifest), "-o", str(tmp_path / "n.tsv")])
    assert res.exit_code == 0 and "warning:" not in res.stderr  # no advice that the manifest cannot take
    for args, message in (
        (["--speaker-level", "parent"], "--speaker-level is for audio folders; this is a manifest"),
        (["--id-prefix", "x"], "--id-prefix is for audio folders; this is a manifest"),
    ):
        res = runner.invoke(app, ["prepare", str(manifest), "-o", str(tmp_path / "o.tsv"), *args])
        assert res.exit_code == 2 and message in res.stderr and not (tmp_path / "o.tsv").exists(), res.output
    res = runner.invoke(
        app,
        [
            "prepare",
            str(root / "audio_data" / "female"),
            str(root / "audio_data" / "male"),
            "-o",
            str(tmp_path / "o.tsv"),
            "--id-prefix",
            "x",
        ],
    )
    assert res.exit_code == 2 and "takes one ROOT, not 2" in res.stderr and not (tmp_path / "o.tsv").exists()


def test_no_warning_for_a_voxceleb_layout(tiny_corpus: Path) -> None:
    utts, _ = scan(tiny_corpus)
    assert len({u.speaker for u in utts}) == 6 and speaker_folder_hints(utts) == []


def test_id_prefix_keeps_the_full_corpus_ids(tmp_path: Path) -> None:
    root = _nested(tmp_path / "corpus")
    full, _ = scan(root, speaker_level="parent")
    sub, _ = scan(root / "audio_data" / "female", speaker_level=3, id_prefix="audio_data/female/")
    assert sub == [u for u in full if u.utt_id.startswith("audio_data/female/")] and len(sub) == 12
    res = runner.invoke(
        app,
        [
            "prepare",
            str(root / "audio_data" / "female"),
            "-o",
            "-",
            "--id-prefix",
            "audio_data/female",
            "--speaker-level",
            "parent",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "audio_data/female/S_01/0.wav\t" in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--speaker-level", "deep"], "--speaker-level 'deep': give parent, top or a folder level N >= 1"),
        (["--speaker-level", "0"], "--speaker-level '0'"),
        (["--speaker-level", "parent", "--layout", "voxceleb"], "without --layout voxceleb"),
        (["--id-prefix", "../up"], "--id-prefix '../up': give a relative folder path"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--id-prefix", "my corpus"], "--id-prefix 'my corpus': give a relative folder path without spaces"),
        (["--threads", "2", "--workers", "2"], "--workers is the old name of --threads: give one of them"),
    ],
)
def test_bad_naming_options_are_one_line_and_write_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    root = _nested(tmp_path / "corpus", n=2)
    res = runner.invoke(app, ["prepare", str(root), "-o", str(tmp_path / "m.tsv"), *args])
    assert res.exit_code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.tsv").exists()


def test_prepare_workers_is_a_hidden_old_name_of_threads(tmp_path: Path, tiny_corpus: Path) -> None:
    res = runner.invoke(app, ["prepare", str(tiny_corpus), "-o", str(tmp_path / "m.tsv"), "--workers", "2"])
    assert res.exit_code == 0, res.output
    help_text = runner.invoke(app, ["prepare", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--threads" in help_text and "--workers" not in help_text


# 4. One-line usage errors and tidy help ------------------------------------------------------------


@pytest.mark.parametrize(
    "args, line",
    [
        (["score", "--foo"], "spkemb score: no such option --foo; see spkemb score --help"),
        (
            ["extract", "a", "b", "-o", "c", "--precison", "bf16"],
            "spkemb extract: no such option --precison (did you mean --precision?); see spkemb extract --help",
        ),
        (["extract"], "spkemb extract: missing argument 'MODEL'; see spkemb extract --help"),
        (
            ["extract", "a", "b", "-o", "c", "--precision", "fp64"],
            "spkemb extract: invalid value for '--precision': 'fp64' is not one of 'fp32', 'bf16', 'fp16', 'int8'; "
            "see spkemb extract --help",
        ),
        (["prepare", "x", "--min-duration", "long"], "spkemb prepare: invalid value for '--min-duration'"),
        (["nosuch"], "spkemb: no such command 'nosuch'; see spkemb --help"),
        # click's parser raises these without a context: the line still names the subcommand
        (["score", "-o"], "spkemb score: option '-o' requires an argument; see spkemb score --help"),
        (["prepare", "x", "--threads"], "spkemb prepare: option '--threads' requires an argument; see spkemb prepare"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(args: list[str], line: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert res.stdout == "" and res.stderr.count("\n") == 1 and res.stderr.startswith(line), res.stderr


def test_a_usage_error_from_the_installed_command_is_one_line() -> None:
    res = subprocess.run([sys.executable, "-m", "spkemb", "score", "--foo"], capture_output=True, text=True, env=_env())
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == "python -m spkemb score: no such option --foo; see python -m spkemb score --help\n"


def _params(name: str) -> list:
    top = typer.main.get_command(app)
    command = top.commands[name]  # type: ignore[attr-defined]
    return command.get_params(top.context_class(command, info_name=name))


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_upper_case_metavars_and_no_python_types(name: str) -> None:
    res = runner.invoke(app, [name, "--help"], env={"COLUMNS": "250"})
    assert res.exit_code == 0
    assert not re.search(r"<(str|int|float|bool|path|list|[a-z_]+\|)", res.stdout), res.stdout
    assert "{" not in res.stdout.split("\n\n")[0]  # usage line: MODEL, not Typer's {MODEL}
    for p in _params(name):
        if getattr(p, "is_flag", False) or p.metavar.startswith("["):  # a flag; a list of the choices
            continue
        assert p.metavar and p.metavar != p.metavar.lower(), f"{name} {p.name}: metavar {p.metavar!r}"


def test_choices_are_listed_for_method_precision_and_device() -> None:
    for name in COMMANDS:
        for p in _params(name):
            if p.name in ("precision", "device") or (p.name == "method" and name != "score"):
                assert p.metavar.startswith("[") and "|" in p.metavar, f"{name} --{p.name}: {p.metavar}"
    metavars = {p.name: p.metavar for p in _params("extract")}
    assert metavars["device"] == "[auto|cpu|cuda|cuda:N]" and metavars["precision"] == "[fp32|bf16|fp16|int8]"


def test_workers_means_processes_everywhere() -> None:
    for name in ("augment", "pretrain", "finetune", "extract"):
        (workers,) = [p for p in _params(name) if p.name == "workers"]
        assert "process" in (workers.help or ""), name
    assert [p.hidden for p in _params("prepare") if p.name == "workers"] == [True]


# 5. The demo is reproducible -----------------------------------------------------------------------

TINY_DEMO = {
    "DEMO_SPEAKERS": "6",
    "DEMO_UTTS": "4",
    "DEMO_MIN_SECONDS": "2",
    "DEMO_MAX_SECONDS": "3",
    "DEMO_NOISE": "2",
    "DEMO_TARGETS": "20",
    "DEMO_NONTARGETS": "100",
    "DEMO_CHANNELS": "16",
    "DEMO_BATCH": "8",
    "DEMO_STEPS": "6",
    "DEMO_THREADS": "1",
    "DEMO_ENCODERS": "mfcc-stats cel-ecapa",
}


def _table(stdout: str) -> str:
    return stdout[stdout.index("encoder ") : stdout.index("scores:")]


@pytest.mark.slow
def test_the_demo_table_is_identical_across_runs_and_a_rerun_skips_its_steps(tmp_path: Path) -> None:
    """Two runs of examples/demo.sh at a tiny size, at once (one thread each), print the same table."""
    bin_dir = str(Path(sys.executable).parent)
    env = _env(**TINY_DEMO, PATH=f"{bin_dir}:{os.environ['PATH']}", SPKEMB_LOG_INTERVAL="3600")
    runs = [
        subprocess.Popen(
            ["bash", "examples/demo.sh"],
            cwd=ROOT,
            env={**env, "DEMO_DIR": str(tmp_path / d)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in ("a", "b")
    ]
    outs = [r.communicate() for r in runs]
    for r, (_, err) in zip(runs, outs, strict=True):
        assert r.returncode == 0, err[-2000:]
    assert _table(outs[0][0]) == _table(outs[1][0])
    assert [ln.split()[0] for ln in _table(outs[0][0]).splitlines()[1:] if ln] == ["mfcc-stats", "cel-ecapa"]
    again = subprocess.run(
        ["bash", "examples/demo.sh"],
        cwd=ROOT,
        env={**env, "DEMO_DIR": str(tmp_path / "a")},
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and _table(again.stdout) == _table(outs[0][0])
    assert again.stderr.count("already complete") == 2  # the stores; nothing else ran again
    assert "step " not in again.stderr and "utterances," not in again.stderr


# 6. Man pages ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ("spkemb", *COMMANDS))
def test_man_pages_have_a_full_name_line_exit_status_and_examples(name: str) -> None:
    page = (ROOT / "man" / (name if name == "spkemb" else f"spkemb-{name}")).with_suffix(".1").read_text()
    name_line = page.split(".SH NAME\n")[1].splitlines()[0]
    assert " \\- " in name_line and "..." not in name_line and len(name_line) > 40
    for section in (".SH SYNOPSIS", ".SH EXIT STATUS", ".SH EXAMPLES"):
        assert section in page, f"{name}: no {section}"
    assert ".TP\n2\n" in page and ".TP\n1\n" in page


def test_man_page_examples_use_real_options() -> None:
    from spkemb.cli.examples import EXAMPLES

    top = typer.main.get_command(app)
    for name, examples in EXAMPLES.items():
        command = top if name == "spkemb" else top.commands[name]  # type: ignore[attr-defined]
        for _, lines in examples:
            for line in lines.splitlines():
                for part in line.split(" & "):
                    used = re.findall(r"(?<=\s)--?[a-z][\w-]*", f" {part.split('spkemb ', 1)[-1]}")
                    sub = top.commands[part.split("spkemb ", 1)[1].split()[0]] if name == "spkemb" else command  # type: ignore[attr-defined]
                    known = {o for p in sub.params for o in (*p.opts, *p.secondary_opts)}
                    assert set(used) <= known, f"{name}: {line}: {set(used) - known}"


# 7. Busy machines ---------------------------------------------------------------------------------


def test_oversubscription_is_found_from_the_load_average() -> None:
    assert oversubscription(threads=2, load=2.1, cores=2, others=2) == Busy(2.1, 2, 2)
    assert oversubscription(threads=2, load=2.1, cores=2, others=2).free() == 1  # type: ignore[union-attr]
    assert oversubscription(threads=2, load=2.1, cores=2, others=None) == Busy(2.1, 2, 2)  # running count unknown
    assert oversubscription(threads=2, load=0.3, cores=2, others=2) is None  # an idle machine
    assert oversubscription(threads=4, load=1.5, cores=16, others=2) is None  # room to spare
    # The previous job of a pipeline has just ended: its load lingers, but nothing else runs now.
    assert oversubscription(threads=2, load=2.1, cores=2, others=0) is None
    assert oversubscription(threads=1, load=8.0, cores=2, others=8) is None  # one thread: nothing to give back


def test_others_running_reads_the_running_count(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    import io

    real_open = builtins.open

    def fake(path: str, *a: object, **k: object) -> object:
        return io.StringIO("2.10 1.50 1.00 4/312 12345\n") if path == "/proc/loadavg" else real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake)
    assert others_running() == 3  # four running, this process one of them


def test_a_busy_machine_gets_a_one_line_notice(tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 5.0, 4.0))
    monkeypatch.setattr("spkemb.utils.system.cpu_cores", lambda: 4)
    monkeypatch.setattr("spkemb.utils.system.others_running", lambda: 5)
    res = runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(tmp_path / "e.h5"), "--threads", "2"])
    assert res.exit_code == 0, res.output
    (notice,) = [ln for ln in res.stderr.splitlines() if ln.startswith("notice:")]
    assert "load 6 on 4 cores" in notice and "--threads 1 or OMP_NUM_THREADS=1" in notice
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    res = runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(tmp_path / "f.h5")])
    assert res.exit_code == 0 and "notice:" not in res.stderr


# 8. Start-up -----------------------------------------------------------------------------------------


def test_help_usage_errors_and_finished_extractions_never_import_torch(tmp_path: Path, manifest: Path) -> None:
    out = tmp_path / "e.h5"
    assert runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(out)]).exit_code == 0
    code = (
        "import sys\nfrom spkemb.cli.app import app\n"
        "for args in (['extract', '--help'], ['score', '--foo'], "
        f"['extract', 'mfcc-stats', {str(manifest)!r}, '-o', {str(out)!r}]):\n"
        "    try:\n"
        "        app(args, standalone_mode=False)\n"
        "    except BaseException as err:\n"
        "        print(type(err).__name__)\n"
        "import spkemb.audio\n"
        "print(sorted(m for m in ('torch', 'scipy.signal') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert "NoSuchOption" in lines  # the usage error did happen
    assert lines[-1] == "[]"


@pytest.mark.parametrize("name", ["spkemb", "prepare", "extract", "score"])
def test_help_ends_with_the_man_pages_examples(name: str) -> None:
    from spkemb.cli.examples import EXAMPLES

    res = runner.invoke(app, ([] if name == "spkemb" else [name]) + ["--help"], env={"COLUMNS": "250"})
    assert res.exit_code == 0
    text = " ".join(res.stdout.split())
    for what, command in EXAMPLES[name]:
        assert " ".join(what.split()) in text and " ".join(command.splitlines()[0].split()) in text
