"""spkemb finetune: labels, init from a pretrained encoder, bad input, and the pieces' wiring."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.data.manifest import read_manifest
from spkemb.errors import InputError
from spkemb.models import build_encoder, load_encoder, save_encoder
from spkemb.train.finetune import assign_labels, load_init

runner = CliRunner()
TINY = [
    "--encoder-opt",
    "channels=16",
    "--encoder-opt",
    "mfa_channels=48",
    "--encoder-opt",
    "attention_channels=8",
    "--encoder-opt",
    "se_channels=8",
    "--encoder-opt",
    "embed_dim=16",
]
RUN = ["--max-steps", "3", "--batch-size", "6", "--device", "cpu", "--method-opt", "crop_seconds=0.5"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(5)
    enc = build_encoder("ecapa", channels=16, mfa_channels=48, attention_channels=8, se_channels=8, embed_dim=16)
    path = tmp_path_factory.mktemp("init") / "encoder.pt"
    save_encoder(enc, path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_finetune_trains_on_speakers_and_writes_an_extractable_encoder(tmp_path: Path, manifest: Path) -> None:
    out = tmp_path / "ft"
    res = runner.invoke(app, ["finetune", str(manifest), "-o", str(out), *TINY, *RUN, "--loss", "aam+supcon-aam"])
    assert res.exit_code == 0, res.output
    assert (out / "encoder.pt").is_file() and (out / "checkpoints").is_dir()
    assert (out / "classes.txt").read_text().split() == [f"spk{i:03d}" for i in range(6)]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert '"acc"' in lines[-1] and '"margin"' in lines[-1] and '"supcon"' in lines[-1]
    assert load_encoder(out / "encoder.pt").embed_dim == 16
    emb = tmp_path / "e.h5"
    assert runner.invoke(app, ["extract", str(out), str(manifest), "-o", str(emb)]).exit_code == 0


def test_init_changes_the_starting_weights(pretrained: Path) -> None:
    """A silent fresh start would leave the encoder as built; the init must replace every tensor."""
    torch.manual_seed(0)
    fresh = build_encoder("ecapa", channels=16, mfa_channels=48, attention_channels=8, se_channels=8, embed_dim=16)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    info = load_init(fresh, pretrained)
    source = load_encoder(pretrained).state_dict()
    assert info["loaded"] == info["total"] == len(before)
    assert any(not torch.equal(before[k], v) for k, v in fresh.state_dict().items() if v.is_floating_point())
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, source[k]), k


def test_init_from_another_architecture_is_refused(tmp_path: Path, manifest: Path) -> None:
    other = tmp_path / "tdnn.pt"
    save_encoder(build_encoder("tdnn", channels=8, stats_channels=16, embed_dim=8), other)
    out = tmp_path / "ft"
    res = runner.invoke(
        app, ["finetune", str(manifest), "-o", str(out), "--init", str(other), "--encoder", "ecapa", *TINY, *RUN]
    )
    assert res.exit_code == 2 and "tdnn.pt" in res.output and not out.exists()


def test_init_sets_the_architecture_when_no_encoder_is_given(tmp_path: Path, manifest: Path, pretrained: Path) -> None:
    out = tmp_path / "ft"
    res = runner.invoke(app, ["finetune", str(manifest), "-o", str(out), "--init", str(pretrained), *RUN])
    assert res.exit_code == 0, res.output
    assert load_encoder(out / "encoder.pt").config == load_encoder(pretrained).config


def test_labels_file_replaces_the_speakers(tmp_path: Path, manifest: Path) -> None:
    utts = read_manifest(manifest)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{u.utt_id} c{i % 3}\n" for i, u in enumerate(utts)))
    out = tmp_path / "ft"
    res = runner.invoke(
        app, ["finetune", str(manifest), "-o", str(out), "--labels", str(labels), *TINY, *RUN, "--batch-size", "3"]
    )
    assert res.exit_code == 0, res.output
    assert (out / "classes.txt").read_text().split() == ["c0", "c1", "c2"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("nowhere/x.wav spk1\n", "not in the manifest"),
        ("", "no 'utt_id label' lines"),
    ],
)
def test_bad_labels_files_exit_2_and_write_nothing(tmp_path: Path, manifest: Path, content: str, message: str) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text(content)
    out = tmp_path / "ft"
    res = runner.invoke(app, ["finetune", str(manifest), "-o", str(out), "--labels", str(labels), *TINY, *RUN])
    assert res.exit_code == 2 and message in res.output and not out.exists()


def test_labels_giving_one_speaker_are_refused(manifest: Path) -> None:
    utts = read_manifest(manifest)
    with pytest.raises(InputError, match="1 speaker"):
        assign_labels(utts, {u.utt_id: "same" for u in utts})


def test_an_existing_finetune_is_not_replaced(tmp_path: Path, manifest: Path) -> None:
    out = tmp_path / "ft"
    assert runner.invoke(app, ["finetune", str(manifest), "-o", str(out), *TINY, *RUN]).exit_code == 0
    before = _sha(out / "encoder.pt")
    res = runner.invoke(app, ["finetune", str(manifest), "-o", str(out), *TINY, *RUN])
    assert res.exit_code == 2 and "--resume" in res.output and _sha(out / "encoder.pt") == before
    res = runner.invoke(app, ["finetune", str(manifest), "-o", str(out), *TINY, *RUN, "--max-steps", "4", "--resume"])
    assert res.exit_code == 0, res.output


def test_ddp_two_gloo_processes_end_with_identical_weights(tmp_path: Path, manifest: Path) -> None:
    """Weights, classifier, gate state and step count agree on both ranks (forked, as torchrun would start them)."""
    import multiprocessing as mp
    import socket

    from ddp_finetune import run_rank

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=run_rank, args=(r, 2, port, str(tmp_path), str(manifest))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    h0, h1 = ((tmp_path / f"hash-{r}.txt").read_text().split() for r in range(2))
    assert h0 == h1 and h0[1] == "4"
    assert (tmp_path / "exp" / "encoder.pt").is_file()
