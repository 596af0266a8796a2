"""Faults of extract and the store found by the probe of issue 21 (items 4, 5, 11, 17, 18): each is one
line and an exit status, never a traceback, a crash or a wrong result."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.data.manifest import read_manifest, write_manifest
from spkemb.embeddings.store import read_embeddings

runner = CliRunner()


@pytest.fixture(scope="module")
def manifest(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m") / "manifest.tsv"
    assert runner.invoke(app, ["prepare", str(tiny_corpus), "-o", str(out)]).exit_code == 0
    return out


def errors(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.strip() and not ln.startswith("notice:")]


def spkemb(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """In a process of its own: a crash (segfault) must not take the tests with it."""
    cmd = [sys.executable, "-m", "spkemb", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)


# 4 ---------------------------------------------------------------------------------------------------


def test_extract_to_stdout_is_refused(manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", "-"])
    assert res.exit_code == 2
    [line] = errors(res.output)
    assert "-o '-'" in line and "stdout" in line
    assert not (tmp_path / "-").exists() and not list(tmp_path.iterdir())


# 5 ---------------------------------------------------------------------------------------------------


def test_a_mistyped_model_is_named_before_the_output(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.h5"
    assert runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(out)]).exit_code == 0
    res = runner.invoke(app, ["extract", str(tmp_path / "exp" / "nope"), str(manifest), "-o", str(out)])
    assert res.exit_code == 2
    [line] = errors(res.output)
    assert "nope" in line and "no such encoder" in line and "another encoder" not in line


# 11 --------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk-{size}"
        where.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if res.returncode:
            pytest.skip("cannot mount a small tmpfs here (not root, or no permission)")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], capture_output=True)


@pytest.mark.parametrize("size", ["4k", "12k", "40k"])
def test_a_full_disk_at_the_start_is_one_line_and_leaves_nothing(
    manifest: Path, tmp_path: Path, small_disk: Callable[[str], Path], size: str
) -> None:
    utts = read_manifest(manifest)
    many = [
        dataclasses.replace(utts[i % len(utts)], utt_id=f"x{i:03d}/{utts[i % len(utts)].utt_id}") for i in range(100)
    ]
    write_manifest(many, tmp_path / "m.tsv")
    disk = small_disk(size)
    for _ in range(2):  # and again: nothing left behind stands in the rerun's way
        res = spkemb("extract", "mfcc-stats", tmp_path / "m.tsv", "-o", disk / "e.h5")
        assert res.returncode == 1, res.stderr
        [line] = errors(res.stderr)
        assert "no space left on the device" in line and "Traceback" not in res.stderr
        assert list(disk.iterdir()) == []
    res = spkemb("extract", "mfcc-stats", tmp_path / "m.tsv", "-o", tmp_path / "e.h5")
    assert res.returncode == 0 and len(read_embeddings(tmp_path / "e.h5")) == 100


# 17 --------------------------------------------------------------------------------------------------


def test_a_shard_of_another_manifest_is_refused_by_the_merge(manifest: Path, tmp_path: Path) -> None:
    utts = read_manifest(manifest)
    n = len(utts)
    rows = range(n // 3, 2 * n // 3)  # shard 1/3
    other = list(utts)
    for i, j in zip(rows, [*rows[1:], rows[0]], strict=True):  # same ids, other audio
        other[i] = dataclasses.replace(utts[i], path=utts[j].path)
    write_manifest(other, tmp_path / "other.tsv")
    shards = []
    for i, src in ((0, manifest), (1, tmp_path / "other.tsv"), (2, manifest)):
        s = tmp_path / f"s{i}.h5"
        assert runner.invoke(app, ["extract", "mfcc-stats", str(src), "-o", str(s), "--shard", f"{i}/3"]).exit_code == 0
        shards += ["--merge", str(s)]
    out = tmp_path / "merged.h5"
    res = runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(out), *shards])
    assert res.exit_code == 2
    [line] = errors(res.output)
    assert "s1.h5" in line and "another manifest" in line
    assert not out.exists()


def test_shards_of_a_manifest_split_by_hand_still_merge(manifest: Path, tmp_path: Path) -> None:
    utts = read_manifest(manifest)
    halves = [utts[: len(utts) // 2], utts[len(utts) // 2 :]]
    args = []
    for i, half in enumerate(halves):
        write_manifest(half, tmp_path / f"h{i}.tsv")
        s = tmp_path / f"h{i}.h5"
        assert runner.invoke(app, ["extract", "mfcc-stats", str(tmp_path / f"h{i}.tsv"), "-o", str(s)]).exit_code == 0
        args += ["--merge", str(s)]
    res = runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(tmp_path / "m.h5"), *args])
    assert res.exit_code == 0, res.output
    assert read_embeddings(tmp_path / "m.h5").ids == [u.utt_id for u in utts]


# 18 --------------------------------------------------------------------------------------------------


def _forge(path: Path, change: str) -> None:
    with h5py.File(path, "r+") as f:
        ids = f["utt_id"][()]
        if change == "rows":
            del f["embedding"]
            f["embedding"] = np.zeros((len(ids) - 2, 8), dtype=np.float32)
        elif change == "speakers":
            spk = f["speaker"][()]
            del f["speaker"]
            f.create_dataset("speaker", data=spk[:3], dtype=h5py.string_dtype())
        elif change == "duplicates":
            ids[1] = ids[0]
            del f["utt_id"]
            f.create_dataset("utt_id", data=ids, dtype=h5py.string_dtype())
        elif change == "complete":
            f.attrs["complete"] = "False"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("rows", "utt_ids but"),
        ("speakers", "speakers"),
        ("duplicates", "more than once"),
        ("complete", "incomplete"),
    ],
)
def test_forged_stores_are_one_line(manifest: Path, tmp_path: Path, change: str, problem: str) -> None:
    store = tmp_path / "e.h5"
    assert runner.invoke(app, ["extract", "mfcc-stats", str(manifest), "-o", str(store)]).exit_code == 0
    ids = read_embeddings(store).ids
    (tmp_path / "trials.txt").write_text(f"1 {ids[0]} {ids[1]}\n0 {ids[0]} {ids[-1]}\n")
    _forge(store, change)
    cluster = ["cluster", store, "--n-clusters", "2", "-o", tmp_path / "labels.txt"]
    for args in (cluster, ["score", tmp_path / "trials.txt", store]):
        res = spkemb(*args)
        assert res.returncode == 2, (args, res.stderr)
        [line] = errors(res.stderr)
        assert problem in line and str(store) in line, line
    assert not (tmp_path / "labels.txt").exists()
