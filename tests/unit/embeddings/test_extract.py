"""Extraction end to end through the CLI, plus the core's resume, chunking, sharding and precision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.data.manifest import Utterance, read_manifest, write_manifest
from spkemb.data.utterances import bucket_batches
from spkemb.embeddings.extract import ExtractOptions, extract_embeddings
from spkemb.embeddings.store import partial_path, read_embeddings
from spkemb.models import build_encoder, save_encoder

runner = CliRunner()


@pytest.fixture(scope="module")
def manifest(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m") / "manifest.tsv"
    res = runner.invoke(app, ["prepare", str(tiny_corpus), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    enc = build_encoder("ecapa", channels=32)
    return save_encoder(enc, tmp_path_factory.mktemp("enc") / "encoder.pt")


def test_cli_extract_writes_a_row_per_utterance(manifest: Path, encoder_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb.h5"
    res = runner.invoke(app, ["extract", str(encoder_file), str(manifest), "-o", str(out), "--workers", "0"])
    assert res.exit_code == 0, res.output
    emb = read_embeddings(out)
    utts = read_manifest(manifest)
    assert emb.ids == [u.utt_id for u in utts]
    assert emb.vectors.shape == (len(utts), 192) and np.isfinite(emb.vectors).all()
    assert emb.speakers == [u.speaker for u in utts]
    assert emb.attrs["encoder"] == "ecapa" and len(emb.attrs["checkpoint_sha256"]) == 64
    assert emb.attrs["encoder_config"]["channels"] == 32


def test_mfcc_baseline_by_name_and_export(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "mfcc.h5"
    res = runner.invoke(
        app, ["extract", "mfcc-stats", str(manifest), "-o", str(out), "--workers", "0", "--export", "npy"]
    )
    assert res.exit_code == 0, res.output
    emb = read_embeddings(out)
    assert np.array_equal(np.load(tmp_path / "mfcc.npy"), emb.vectors)


def test_batched_equals_one_at_a_time(manifest: Path, encoder_file: Path, tmp_path: Path) -> None:
    """Length bucketing with padding must not change the embeddings (beyond padding effects)."""
    from spkemb.models import load_encoder

    utts = read_manifest(manifest)
    model = load_encoder(encoder_file)
    a = extract_embeddings(model, utts, tmp_path / "a.h5", {}, ExtractOptions(workers=0, device="cpu"))
    b = extract_embeddings(model, utts, tmp_path / "b.h5", {}, ExtractOptions(workers=0, max_batch=1, device="cpu"))
    va, vb = read_embeddings(a.path).vectors, read_embeddings(b.path).vectors
    cos = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    assert cos.min() > 0.99


def test_interrupted_extraction_resumes(
    manifest: Path, encoder_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spkemb.embeddings import extract as ex
    from spkemb.models import load_encoder

    utts = read_manifest(manifest)
    model = load_encoder(encoder_file)
    out = tmp_path / "r.h5"
    calls = {"n": 0}
    real = ex.embed_batch

    def dying(*args, **kwargs):  # noqa: ANN002, ANN003
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "embed_batch", dying)
    opts = ExtractOptions(workers=0, max_batch=4, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        extract_embeddings(model, utts, out, {"checkpoint_sha256": "x"}, opts)
    assert not out.exists() and partial_path(out).exists()
    monkeypatch.setattr(ex, "embed_batch", real)
    res = extract_embeddings(model, utts, out, {"checkpoint_sha256": "x"}, opts)
    assert res.resumed == 8 and res.written == len(utts)
    full = extract_embeddings(model, utts, tmp_path / "full.h5", {}, opts)
    np.testing.assert_allclose(read_embeddings(out).vectors, read_embeddings(full.path).vectors, atol=1e-5)


def test_chunked_long_audio(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "long.wav", 0.1 * rng.standard_normal(16000 * 7).astype(np.float32), 16000)
    utts = [Utterance("long.wav", str(tmp_path / "long.wav"), "s", 7.0, 16000)]
    torch.manual_seed(0)
    model = build_encoder("ecapa", channels=32).eval()
    res = extract_embeddings(
        model, utts, tmp_path / "c.h5", {}, ExtractOptions(workers=0, chunk=3, hop=2, device="cpu")
    )
    got = read_embeddings(res.path).vectors[0]
    x = torch.from_numpy(sf.read(tmp_path / "long.wav", dtype="float32")[0])
    with torch.inference_mode():
        pieces = torch.stack([x[s : s + 48000] for s in (0, 32000, 64000)])  # the last window ends at the end
        emb = model(pieces).mean(0).numpy()  # raw pieces averaged: same scale as unchunked rows
    np.testing.assert_allclose(got, emb, atol=1e-4)


def test_bf16_close_to_fp32(manifest: Path, encoder_file: Path, tmp_path: Path) -> None:
    from spkemb.models import load_encoder

    utts = read_manifest(manifest)[:6]
    model = load_encoder(encoder_file)
    a = extract_embeddings(model, utts, tmp_path / "a.h5", {}, ExtractOptions(workers=0, device="cpu"))
    b = extract_embeddings(
        model, utts, tmp_path / "b.h5", {}, ExtractOptions(workers=0, device="cpu", precision="bf16")
    )
    va, vb = read_embeddings(a.path).vectors, read_embeddings(b.path).vectors
    cos = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    assert cos.min() > 0.99


def test_shards_merge_into_the_full_store(manifest: Path, tmp_path: Path) -> None:
    full = tmp_path / "full.h5"
    res = runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(full), "--workers", "0"])
    assert res.exit_code == 0, res.output
    shards = []
    for i in range(3):
        s = tmp_path / f"s{i}.h5"
        res = runner.invoke(
            app, ["extract", "mfcc-stats", str(manifest), "-o", str(s), "--workers", "0", "--shard", f"{i}/3"]
        )
        assert res.exit_code == 0, res.output
        shards += ["--merge", str(s)]
    merged = tmp_path / "merged.h5"
    res = runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(merged), *shards])
    assert res.exit_code == 0, res.output
    a, b = read_embeddings(full), read_embeddings(merged)
    assert a.ids == b.ids
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    res = runner.invoke(
        app, ["extract", "mfcc-stats", str(manifest), "-o", str(tmp_path / "m2.h5"), "--merge", str(tmp_path / "s0.h5")]
    )
    assert res.exit_code == 2 and "do not cover" in res.output


def test_bad_files_are_skipped_and_reported(tmp_path: Path, tiny_corpus: Path) -> None:
    utts = read_manifest_of(tiny_corpus)[:3]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEnot really audio")
    utts.append(Utterance("bad.wav", str(bad), "x", 1.0, 16000))
    write_manifest(utts, tmp_path / "m.tsv")
    res = runner.invoke(
        app, ["extract", "mfcc-stats", str(tmp_path / "m.tsv"), "-o", str(tmp_path / "e.h5"), "--workers", "0"]
    )
    assert res.exit_code == 0, res.output
    assert "bad.wav" in res.output
    assert len(read_embeddings(tmp_path / "e.h5")) == 3


def read_manifest_of(root: Path) -> list[Utterance]:
    from spkemb.data.layouts import scan

    return scan(root)[0]


def test_failed_run_leaves_existing_output(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "keep.h5"
    out.write_bytes(b"precious")
    for args in (["no-such-model", str(manifest)], ["mfcc-stats", str(tmp_path / "missing.tsv")]):
        res = subprocess.run(
            [sys.executable, "-m", "spkemb", "extract", *args, "-o", str(out)], capture_output=True, text=True
        )
        assert res.returncode == 2
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert out.read_bytes() == b"precious"


def test_bucket_batches_respects_limits() -> None:
    d = [1.0, 10.0, 2.0, 9.5, 3.0, 0.5]
    batches = bucket_batches(d, max_seconds=20, max_items=3)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) <= 3 and max(d[i] for i in b) * len(b) <= 20 or len(b) == 1
    assert batches[0][0] == 1  # longest first


def test_short_clip_and_stereo_44k_are_embedded(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    sf.write(tmp_path / "short.wav", 0.1 * rng.standard_normal(1600).astype(np.float32), 16000)  # 0.1 s
    sf.write(tmp_path / "st.flac", 0.1 * rng.standard_normal((44100 * 2, 2)).astype(np.float32), 44100)
    write_manifest(
        [
            Utterance("short.wav", str(tmp_path / "short.wav"), "a", 0.1, 16000),
            Utterance("st.flac", str(tmp_path / "st.flac"), "b", 2.0, 44100),
        ],
        tmp_path / "m.tsv",
    )
    res = runner.invoke(app, ["extract", "mfcc-stats", str(tmp_path / "m.tsv"), "-o", str(tmp_path / "e.h5")])
    assert res.exit_code == 0, res.output
    emb = read_embeddings(tmp_path / "e.h5")
    assert emb.ids == ["short.wav", "st.flac"] and np.isfinite(emb.vectors).all()


def test_bad_options_and_inputs_are_one_line(manifest: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "e.h5")
    for args, problem in (
        (["mfcc-stats", str(manifest), "--chunk", "-1"], "--chunk"),
        (["mfcc-stats", str(manifest), "--hop", "1"], "--hop"),
        (["mfcc-stats", str(manifest), "--shard", "5/4"], "--shard"),
        (["mfcc-stats", str(tmp_path / "x.h5")], "not a manifest"),
    ):
        if problem == "not a manifest":
            (tmp_path / "x.h5").write_bytes(b"\x89HDF\r\n\x1a\n\x00\xff\xfe")
        res = runner.invoke(app, ["extract", *args, "-o", out])
        assert res.exit_code == 2 and problem in res.output, res.output


def test_random_encoder_does_not_replace_an_experiment(manifest: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    args = ["pretrain", str(manifest), "-o", str(exp), "--method", "none", "--encoder-opt", "channels=32"]
    assert runner.invoke(app, args).exit_code == 0
    before = (exp / "encoder.pt").read_bytes()
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "refusing" in res.output
    assert (exp / "encoder.pt").read_bytes() == before


def test_a_batch_is_pinned_by_the_dataloader(monkeypatch: pytest.MonkeyPatch) -> None:
    """With pin_memory=True (CUDA) the DataLoader pins a batch through its pin_memory method; a plain
    dataclass would be passed through unpinned. (No GPU here: pinning itself is faked.)"""
    import torch
    from torch.utils.data._utils.pin_memory import pin_memory

    from spkemb.data.utterances import Batch

    pinned: list[int] = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: pinned.append(t.numel()) or t.clone())
    b = Batch([3], torch.zeros(2, 5), torch.tensor([5, 4]), torch.tensor([0, 0]), [(1, "bad")])
    out = pin_memory(b)
    assert isinstance(out, Batch) and pinned == [10, 2, 2]
    assert out.rows == [3] and out.errors == [(1, "bad")] and torch.equal(out.lengths, b.lengths)
