"""Extraction under torchrun: two CPU ranks (gloo), forked with the environment torchrun sets, as the
trainer's DDP test does (forking spares each rank re-importing torch)."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.data.manifest import read_manifest, write_manifest
from spkemb.embeddings.ranks import rank_store, split_by_audio
from spkemb.embeddings.store import partial_path, read_embeddings
from spkemb.models import build_encoder, save_encoder

runner = CliRunner()


@pytest.fixture(scope="module")
def manifest(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m") / "manifest.tsv"
    assert runner.invoke(app, ["prepare", str(tiny_corpus), "-o", str(out)]).exit_code == 0
    return out


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_encoder(build_encoder("ecapa", channels=16), tmp_path_factory.mktemp("enc") / "encoder.pt")


def _rank(rank: int, world: int, port: int, args: list[str], log: str, kill_at: int | None) -> None:
    """One rank, as torchrun would start it: its environment, then the command; stderr to ``log``."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115 - the process ends with os._exit
    os.dup2(sys.stderr.fileno(), 2)
    if kill_at is not None:  # this rank dies by kill -9 before its kill_at-th batch
        from spkemb.embeddings import extract as ex
        from spkemb.embeddings.store import StoreWriter

        StoreWriter.FLUSH_SECONDS = 0.0  # each batch durable: the rerun has rows to resume
        real, calls = ex.embed_batch, {"n": 0}

        def dying(*a, **k):  # noqa: ANN002, ANN003, ANN202
            calls["n"] += 1
            if calls["n"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)

        ex.embed_batch = dying
    code = 0
    try:
        app(args, prog_name="spkemb")
    except SystemExit as err:
        code = int(err.code or 0)
    sys.stderr.flush()
    os._exit(code)


def _torchrun(args: list[str], tmp: Path, kill: dict[int, int] | None = None) -> tuple[list[int | None], list[str]]:
    """Run ``spkemb ARGS`` on two forked ranks; their exit codes and stderr."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    logs = [str(tmp / f"rank{r}.log") for r in range(2)]
    procs = [
        ctx.Process(target=_rank, args=(r, 2, port, args, logs[r], (kill or {}).get(r)), daemon=True) for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    for p in procs:
        if p.is_alive():
            p.kill()
    return [p.exitcode for p in procs], [Path(x).read_text() for x in logs]


def test_split_by_audio_is_contiguous_and_balanced() -> None:
    parts = split_by_audio([1.0] * 10 + [10.0], 2)
    assert [list(p) for p in parts] == [list(range(10)), [10]]
    assert [len(p) for p in split_by_audio([1.0] * 7, 3)] == [3, 2, 2]
    assert sum(len(p) for p in split_by_audio([1.0], 4)) == 1  # more ranks than utterances: some get none


def test_two_ranks_equal_one_process_and_resume_after_a_rank_is_killed(
    manifest: Path, encoder_file: Path, tmp_path: Path
) -> None:
    single, out = tmp_path / "single.h5", tmp_path / "emb.h5"
    common = [str(encoder_file), str(manifest), "--max-batch", "1", "--workers", "0", "--device", "cpu"]
    assert runner.invoke(app, ["extract", *common, "-o", str(single)]).exit_code == 0

    codes, logs = _torchrun(["extract", *common, "-o", str(out)], tmp_path, kill={1: 4})
    assert codes == [1, -signal.SIGKILL], logs
    assert "Traceback" not in logs[0]
    [line] = [ln for ln in logs[0].splitlines() if "error" in ln]
    assert "rank 1 of 2 stopped before it finished" in line and "rerun" in line
    assert not out.exists()
    assert read_embeddings(rank_store(out, 0, 2)).ids  # rank 0's part is finished and kept
    assert partial_path(rank_store(out, 1, 2)).exists()  # rank 1's rows so far, to resume

    (tmp_path / "emb.h5.rank2-of-3.partial").write_bytes(b"x")  # left by a run with another world size
    codes, logs = _torchrun(["extract", *common, "-o", str(out), "--json"], tmp_path)
    assert codes == [0, 0], logs
    assert "torchrun: world size 2" in logs[0] and "from an earlier run" in logs[0]
    a, b = read_embeddings(single), read_embeddings(out)
    assert a.ids == b.ids and a.speakers == b.speakers
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    assert not list(tmp_path.glob("emb.h5.rank*"))  # the ranks' parts are merged and removed, stale ones too
    # the merged store is the single extraction's equal: a plain rerun finds nothing to do
    res = runner.invoke(app, ["extract", *common, "-o", str(out)])
    assert res.exit_code == 0 and "already complete" in res.output


def test_a_rank_that_fails_is_named_once(manifest: Path, tmp_path: Path) -> None:
    utts = read_manifest(manifest)
    second = split_by_audio([u.duration for u in utts], 2)[1]  # rank 1's audio cannot be read
    for i in second:
        utts[i] = dataclasses.replace(utts[i], path=str(tmp_path / f"missing{i}.wav"))
    bad = tmp_path / "bad.tsv"
    write_manifest(utts, bad)
    codes, logs = _torchrun(["extract", "mfcc-stats", str(bad), "-o", str(tmp_path / "e.h5")], tmp_path)
    assert codes == [2, 2], logs
    [line] = logs[0].strip().splitlines()[-1:]
    assert line.startswith("spkemb: error: rank 1 of 2: no utterance could be read"), logs[0]
    assert "error" not in logs[1]  # said once, by rank 0


def test_a_store_made_otherwise_is_refused_once(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.h5"
    assert runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(out), "--chunk", "1"]).exit_code == 0
    codes, logs = _torchrun(["extract", "mfcc-stats", str(manifest), "-o", str(out)], tmp_path)
    assert codes == [2, 2], logs
    assert "other extraction options" in logs[0] and "--overwrite" in logs[0]
    assert "error" not in logs[1]
