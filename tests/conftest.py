"""Shared fixtures: a tiny synthetic corpus, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spkemb.data.synthetic import make_corpus

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 speakers x 4 utterances of 1-2 s at 16 kHz, VoxCeleb layout (``spk/sess/utt.wav``)."""
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root, n_speakers=6, utts_per_speaker=4, seconds=(1.0, 2.0), sample_rate=16000, seed=0)
    return root


TESTS = Path(__file__).parent


@pytest.fixture(scope="session")
def manifest(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path) -> Path:
    """``spkemb prepare`` of the tiny corpus (read-only: a test that writes makes its own)."""
    from typer.testing import CliRunner

    from spkemb.cli.app import app

    out = tmp_path_factory.mktemp("manifest") / "m.tsv"
    res = CliRunner().invoke(app, ["prepare", str(tiny_corpus), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark by place: ``tests/e2e/`` runs whole commands or scripts (``-m "not e2e"`` is the fast
    inner loop); a test that starts several processes (gloo, torchrun) is ``ddp``."""
    for item in items:
        place = Path(item.path).relative_to(TESTS).parts
        if place[0] == "e2e":
            item.add_marker(pytest.mark.e2e)
        if "ddp" in item.name or "torchrun" in item.name or "gloo" in item.name or place[-1] == "test_extract_ranks.py":
            item.add_marker(pytest.mark.ddp)
