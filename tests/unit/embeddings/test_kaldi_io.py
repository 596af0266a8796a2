"""Kaldi ark/scp through kaldiio: extract --export kaldi -> import-embeddings gives the same vectors; bad files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.embeddings.kaldi_io import read_kaldi_vectors, write_kaldi_vectors
from spkemb.embeddings.store import read_embeddings, write_embeddings
from spkemb.errors import InputError
from spkemb.models import build_encoder, save_encoder

kaldiio = pytest.importorskip("kaldiio")
runner = CliRunner()


@pytest.fixture(scope="module")
def manifest(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m") / "manifest.tsv"
    res = runner.invoke(app, ["prepare", str(tiny_corpus), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_extract_export_kaldi_then_import_gives_the_same_vectors(manifest: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = save_encoder(build_encoder("ecapa", channels=16), tmp_path / "encoder.pt")
    out = tmp_path / "xvector.h5"
    res = runner.invoke(
        app, ["extract", str(enc), str(manifest), "-o", str(out), "--workers", "0", "--export", "kaldi"]
    )
    assert res.exit_code == 0, res.output
    ark, scp = tmp_path / "xvector.ark", tmp_path / "xvector.scp"
    assert ark.read_bytes()[:64].count(b"\0B") == 1  # binary: 'KEY \0B' then the vector
    emb = read_embeddings(out)
    # kaldiio itself (what WeSpeaker uses) reads the scp, offsets and all
    loaded = dict(kaldiio.load_scp(str(scp)))
    assert list(loaded) == emb.ids
    for i, u in enumerate(emb.ids):
        assert np.array_equal(loaded[u], emb.vectors[i])
    back = tmp_path / "back.h5"
    res = runner.invoke(app, ["import-embeddings", str(scp), "-o", str(back)])
    assert res.exit_code == 0, res.output
    got = read_embeddings(back)
    assert got.ids == emb.ids and np.array_equal(got.vectors, emb.vectors)
    assert got.attrs["source"] == str(scp.resolve()) and got.attrs["encoder"] == "kaldi-import"
    # the ark alone reads too
    ids, vectors = read_kaldi_vectors(ark)
    assert ids == emb.ids and np.array_equal(vectors, emb.vectors)


def test_kaldi_binary_layout_is_what_copy_vector_reads(tmp_path: Path) -> None:
    """Kaldi's binary float vector: 'KEY \\0B' '\\4FV ' int32 size (after '\\4'), then the floats."""
    v = np.array([1.5, -2.0, 0.25], dtype=np.float32)
    write_kaldi_vectors(["u1"], v[None], tmp_path / "a.ark", tmp_path / "a.scp", tmp_path)
    data = (tmp_path / "a.ark").read_bytes()
    assert data[:6] == b"u1 \0BF" and data[6:9] == b"V \x04"
    assert struct.unpack("<i", data[9:13])[0] == 3
    assert np.array_equal(np.frombuffer(data[13:], dtype="<f4"), v)
    assert (tmp_path / "a.scp").read_text() == f"u1 {(tmp_path / 'a.ark').resolve()}:3\n"


def test_import_with_utt2spk_lets_cluster_metrics_see_speakers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_kaldi_vectors(["a1", "a2", "b1"], rng.normal(size=(3, 4)), tmp_path / "x.ark", tmp_path / "x.scp", tmp_path)
    (tmp_path / "utt2spk").write_text("a1 A\na2 A\nb1 B\n")
    out = tmp_path / "x.h5"
    res = runner.invoke(
        app, ["import-embeddings", str(tmp_path / "x.scp"), "-o", str(out), "--utt2spk", str(tmp_path / "utt2spk")]
    )
    assert res.exit_code == 0, res.output
    assert read_embeddings(out).speakers == ["A", "A", "B"]


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    write_kaldi_vectors(["a", "b"], rng.normal(size=(2, 4)), tmp_path / "good.ark", tmp_path / "good.scp", tmp_path)
    full = (tmp_path / "good.ark").read_bytes()
    files = {}
    (tmp_path / "trunc.ark").write_bytes(full[: len(full) - 5])
    files["truncated ark"] = tmp_path / "trunc.ark"
    (tmp_path / "missing.scp").write_text(f"a {tmp_path / 'nowhere.ark'}:2\n")
    files["scp to a missing ark"] = tmp_path / "missing.scp"
    (tmp_path / "junk.scp").write_text("this is not an scp at all\n")
    files["junk scp"] = tmp_path / "junk.scp"
    kaldiio.save_ark(str(tmp_path / "mat.ark"), {"a": rng.normal(size=(5, 4)).astype(np.float32)})
    files["frames, not a vector"] = tmp_path / "mat.ark"
    kaldiio.save_ark(str(tmp_path / "dims.ark"), {"a": np.ones(4, np.float32), "b": np.ones(3, np.float32)})
    files["two dimensions"] = tmp_path / "dims.ark"
    kaldiio.save_ark(str(tmp_path / "nan.ark"), {"a": np.array([np.nan, 1], np.float32)})
    files["NaN"] = tmp_path / "nan.ark"
    (tmp_path / "empty.scp").write_text("")
    files["empty"] = tmp_path / "empty.scp"
    lines = (tmp_path / "good.scp").read_text().splitlines()
    (tmp_path / "twice.scp").write_text(f"{lines[0]}\n{lines[0]}\n")
    files["repeated key"] = tmp_path / "twice.scp"
    return files


def test_bad_kaldi_files_are_one_line_exit_2_and_keep_the_output(tmp_path: Path) -> None:
    out = tmp_path / "keep.h5"
    write_embeddings(out, ["x"], np.ones((1, 2), np.float32))
    before = out.read_bytes()
    for what, path in _bad_files(tmp_path).items():
        with pytest.raises(InputError):
            read_kaldi_vectors(path)
        res = runner.invoke(app, ["import-embeddings", str(path), "-o", str(out), "--overwrite"])
        assert res.exit_code == 2, (what, res.output)
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output, (what, res.output)
        assert out.read_bytes() == before, what
    res = runner.invoke(app, ["import-embeddings", str(tmp_path / "good.scp"), "-o", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output and out.read_bytes() == before
