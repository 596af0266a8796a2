"""`spkemb import-model` (issue 19): writes an encoder that `extract` and `finetune --init` use; bad usage
(unknown format, missing SRC, existing -o, a foreign file) is one line and exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sb_layout import sb_folder
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.embeddings.store import read_embeddings
from spkemb.models import load_encoder

runner = CliRunner()


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imp")
    out = root / "encoder.pt"
    res = runner.invoke(app, ["import-model", "speechbrain", str(sb_folder(root / "sb")), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_the_imported_encoder_loads_with_its_source_recorded(imported: Path) -> None:
    model = load_encoder(imported)
    assert model.config["name"] == "speechbrain-ecapa"
    assert model.extra["imported"]["format"] == "speechbrain"
    assert len(model.extra["imported"]["sha256"]["embedding_model.ckpt"]) == 64


def test_extract_uses_the_imported_encoder(tmp_path: Path, imported: Path, manifest: Path) -> None:
    out = tmp_path / "emb.h5"
    res = runner.invoke(app, ["extract", str(imported), str(manifest), "-o", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    emb = read_embeddings(out)
    assert emb.vectors.shape == (24, 12) and np.isfinite(emb.vectors).all()


def test_finetune_starts_from_the_imported_encoder(tmp_path: Path, imported: Path, manifest: Path) -> None:
    out = tmp_path / "ft"
    run = ["--max-steps", "2", "--batch-size", "6", "--device", "cpu", "--method-opt", "crop_seconds=0.5"]
    res = runner.invoke(app, ["finetune", str(manifest), "-o", str(out), "--init", str(imported), *run])
    assert res.exit_code == 0, res.output
    assert load_encoder(out / "encoder.pt").config == load_encoder(imported).config


def test_an_existing_output_is_refused_unless_overwrite(tmp_path: Path, imported: Path) -> None:
    src = sb_folder(tmp_path / "sb")
    out = tmp_path / "encoder.pt"
    out.write_bytes(b"keep me")
    res = runner.invoke(app, ["import-model", "speechbrain", str(src), "-o", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output and out.read_bytes() == b"keep me"
    res = runner.invoke(app, ["import-model", "speechbrain", str(src), "-o", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert load_encoder(out).config == load_encoder(imported).config


@pytest.mark.parametrize(
    "args, message",
    [
        (["caffe", "{src}"], "FORMAT"),
        (["speechbrain", "{tmp}/nowhere"], "no such file or folder"),
        (["speechbrain", "{tmp}/foreign"], "not a readable SpeechBrain checkpoint"),
        (["speechbrain", "{tmp}/empty"], "no embedding_model.ckpt"),
        (["wespeaker", "{src}/embedding_model.ckpt"], "not a WeSpeaker model: no config.yaml"),
        (["wespeaker", "{src}"], "config.yaml"),
        (["3dspeaker", "{src}/embedding_model.ckpt"], "not a CAM++ or ERes2Net checkpoint"),
        (["3dspeaker", "{tmp}/foreign"], "embedding_model.ckpt"),
    ],
)
def test_bad_usage_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    src = sb_folder(tmp_path / "sb")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "embedding_model.ckpt").write_text("a text file\n")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "encoder.pt"
    argv = [a.format(src=src, tmp=tmp_path) for a in args]
    res = runner.invoke(app, ["import-model", *argv, "-o", str(out)])
    assert res.exit_code == 2 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
