"""Issue 21 (trust, round 3): what the audit of the landed fixes found still open, one test per fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from cli_checks import one_line_error as _error
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.cli.errors import guarded

runner = CliRunner()

GLOO = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:62627: "
    "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application."
)


def _app_raising(err: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @guarded
    def job() -> None:
        raise err

    return app


# --- 18: a killed torchrun rank ------------------------------------------------------------------------


def test_a_lost_peer_under_torchrun_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of one torchrun rank: the other printed a 60-line traceback of its collective."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    r = runner.invoke(_app_raising(RuntimeError(GLOO)), [])
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert "rank 0 of 2" in lines[0] and "Connection reset by peer" in lines[0] and "--resume" in lines[0]
    assert "pair.cc" not in lines[0]


def test_other_runtime_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = runner.invoke(_app_raising(RuntimeError("mat1 and mat2 shapes cannot be multiplied")), [])
    assert isinstance(r.exception, RuntimeError)
    monkeypatch.delenv("WORLD_SIZE")  # one process: a gloo word is no lost peer
    r = runner.invoke(_app_raising(RuntimeError(GLOO)), [])
    assert isinstance(r.exception, RuntimeError)


# --- 5: the inputs before the policy ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pretrain", "{t}/nope.tsv", "-o", "{t}/x"], "nope.tsv: no such manifest"),
        (["finetune", "{t}/nope.tsv", "-o", "{t}/x"], "nope.tsv: no such manifest"),
        (["finetune", "{m}", "-o", "{t}/x", "--labels", "{t}/nolabels.txt"], "nolabels.txt: no such label file"),
    ],
)
def test_a_missing_input_is_named_before_the_missing_bound(
    tmp_path: Path, manifest: Path, args: list[str], message: str
) -> None:
    """Without --max-steps these said 'set max_steps or max_minutes' about a run that could not start."""
    out = _error(runner.invoke(app, [a.format(t=tmp_path, m=manifest) for a in args]))
    assert message in out and "max_steps" not in out and "max-steps" not in out, out


# --- 18: "N scores are not finite" names the file and the embedding --------------------------------------


def _store_with_nan(path: Path, nan_row: int | None) -> list[str]:
    import h5py
    import numpy as np

    from spkemb.embeddings.store import write_embeddings

    ids = [f"s{i % 4}/{i}.wav" for i in range(12)]
    vecs = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
    write_embeddings(path, ids, vecs, speakers=[i.split("/")[0] for i in ids])
    if nan_row is not None:
        with h5py.File(path, "r+") as f:  # as a forged or corrupted store: the writer refuses NaN
            v = f["embedding"][()]
            v[nan_row, 2] = np.nan
            f["embedding"][...] = v
    return ids


def test_a_non_finite_embedding_is_named_by_its_id(tmp_path: Path) -> None:
    """It was '5 of 66 scores are not finite ... on trial 3', naming the trial store even when the cohort held it."""
    good, bad = tmp_path / "good.h5", tmp_path / "bad.h5"
    ids = _store_with_nan(good, None)
    _store_with_nan(bad, 3)
    trials = tmp_path / "t.txt"
    trials.write_text("".join(f"{int(a[:2] == b[:2])} {a} {b}\n" for i, a in enumerate(ids) for b in ids[i + 1 :]))
    out = _error(runner.invoke(app, ["score", str(trials), str(bad)]))
    assert "bad.h5" in out and f"{ids[3]!r} (row 4) is not finite" in out, out
    out = _error(runner.invoke(app, ["score", str(trials), str(good), "--norm", "snorm", "--cohort", str(bad)]))
    assert "bad.h5" in out and "good.h5" not in out and f"cohort embedding of {ids[3]!r}" in out, out
    kept = tmp_path / "kept.txt"  # trials that do not use the bad row still score
    kept.write_text("".join(line + "\n" for line in trials.read_text().splitlines() if ids[3] not in line))
    assert runner.invoke(app, ["score", str(kept), str(bad)]).exit_code == 0


# --- 10: speed perturbation as new speakers, from the command line ---------------------------------------


def test_finetune_speed_flag_makes_each_speed_a_class(tmp_path: Path, manifest: Path) -> None:
    """finetune had no --speed (only a config's data_options), so the recipes' convention was out of reach."""
    tiny = ["--encoder-opt", "channels=16", "--encoder-opt", "mfa_channels=48", "--encoder-opt", "attention_channels=8"]
    tiny += ["--encoder-opt", "se_channels=8", "--encoder-opt", "embed_dim=16"]
    run = ["--max-steps", "2", "--batch-size", "6", "--device", "cpu", "--method-opt", "crop_seconds=0.5"]
    r = runner.invoke(app, ["finetune", str(manifest), "-o", str(tmp_path / "ft"), *tiny, *run, "--speed"])
    assert r.exit_code == 0, r.output
    assert "18 classes for 6 speakers" in r.output, r.output


# --- 6: a random WavLM is said out loud by pretrain too ---------------------------------------------------


def test_pretrain_warns_about_a_random_wavlm_frontend(tmp_path: Path, manifest: Path) -> None:
    wavlm = ["--encoder", "wavlm-mhfa", "--encoder-opt", "num_layers=1", "--encoder-opt", "hidden=32"]
    wavlm += ["--encoder-opt", "attention_heads=2", "--encoder-opt", "ffn_dim=32", "--encoder-opt", "conv_dim=16"]
    wavlm += ["--encoder-opt", "pos_conv_kernel=8", "--encoder-opt", "pos_conv_groups=4", "--encoder-opt", "heads=2"]
    wavlm += ["--encoder-opt", "compression_dim=8", "--encoder-opt", "embed_dim=16"]
    run = ["--method", "simclr", "--max-steps", "1", "--batch-size", "4", "--device", "cpu"]
    run += ["--method-opt", "crop_seconds=0.5"]
    r = runner.invoke(app, ["pretrain", str(manifest), "-o", str(tmp_path / "w"), *wavlm, *run])
    assert r.exit_code == 0, r.output
    assert "RANDOM" in r.output and "--frontend-weights" in r.output, r.output
