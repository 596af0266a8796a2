"""The extraction's loading: the decode-ahead thread (:class:`Prefetch`, for CUDA), the CPU's
in-thread decoding, and the padding-aware batching."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spkemb.data.utterances import Loaded
from spkemb.embeddings.extract import Prefetch
from spkemb.embeddings.plan import padded_batches


class FakeDataset:
    """Item i is a 1-sample piece holding i; ``fail_at`` raises; ``delay`` slows each read."""

    def __init__(self, n: int, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.n, self.fail_at, self.delay = n, fail_at, delay
        self.reads: list[int] = []

    def __getitem__(self, i: int) -> Loaded:
        if i == self.fail_at:
            raise RuntimeError(f"bad item {i}")
        time.sleep(self.delay)
        self.reads.append(i)
        return Loaded(i, [np.full(400, float(i), dtype=np.float32)])

    def __len__(self) -> int:
        return self.n


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "spkemb-decode"]


def test_prefetch_yields_batches_in_order() -> None:
    batches = [[3, 1], [0], [4, 2, 5]]
    ds: Any = FakeDataset(6, delay=0.001)
    got = [b.rows for b in Prefetch(ds, batches)]
    assert got == batches
    again = [b.rows for b in Prefetch(ds, batches)]  # a second loop starts afresh
    assert again == batches
    assert not _decode_threads()


def test_prefetch_raises_the_threads_error() -> None:
    ds: Any = FakeDataset(6, fail_at=4)
    seen = []
    with pytest.raises(RuntimeError, match="bad item 4"):
        for b in Prefetch(ds, [[0, 1], [2, 3], [4, 5]]):
            seen.append(b.rows)
    assert seen == [[0, 1], [2, 3]]
    assert not _decode_threads()


def test_prefetch_early_exit_stops_the_thread() -> None:
    ds: Any = FakeDataset(200, delay=0.002)
    batches = [[i] for i in range(200)]
    for b in Prefetch(ds, batches, depth=2):
        assert b.rows == [0]
        break
    assert not _decode_threads()  # joined on leaving the loop
    assert len(ds.reads) <= 5  # it read ahead by about ``depth`` batches, not the whole list


@pytest.mark.parametrize("seed", range(5))
def test_padded_batches_respect_limits_and_cover_every_index_once(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.5, 30.0, size=int(rng.integers(1, 300))).tolist()
    d.append(50.0)  # longer than a batch's budget: it goes alone
    batches = padded_batches(d, max_seconds=40.0, max_items=7)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(d)))
    for b in batches:
        assert 1 <= len(b) <= 7
        assert len(b) == 1 or max(d[i] for i in b) * len(b) <= 40.0
    assert [len(d) - 1] in batches


def test_padded_batches_cut_where_lengths_drop() -> None:
    # Greedy filling by budget would put a 10-s item with the 2-s ones; the DP keeps like with like.
    d = [10.0, 10.0, 2.0, 2.0, 2.0, 2.0]
    batches = padded_batches(d, max_seconds=30.0, max_items=8, overhead=1.0)
    assert sorted(map(sorted, batches)) == [[0, 1], [2, 3, 4, 5]]
    assert padded_batches([], 10.0, 4) == []


def test_cpu_extraction_never_decodes_while_the_encoder_computes(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the CPU no file is read while the encoder runs (a decode thread beside the encoder's threads
    slowed the forward by a third on 2 cores): every file is read between forwards, by the caller's
    thread."""
    import torch

    from spkemb.data.manifest import read_manifest
    from spkemb.data.utterances import UtteranceDataset
    from spkemb.embeddings.extract import ExtractOptions, extract_embeddings
    from spkemb.models import build_encoder

    computing = threading.Event()
    overlaps: list[int] = []
    readers: set[str] = set()
    real_read = UtteranceDataset.__getitem__

    def reading(self: UtteranceDataset, i: int) -> Any:
        if computing.is_set():
            overlaps.append(i)
        readers.add(threading.current_thread().name)
        time.sleep(0.002)  # (a read long enough to overlap a forward, if the loader let it)
        return real_read(self, i)

    torch.manual_seed(0)
    model = build_encoder("ecapa", channels=16).eval()
    real_forward = model.forward

    def forward(*a: Any, **k: Any) -> Any:
        computing.set()
        try:
            time.sleep(0.01)
            return real_forward(*a, **k)
        finally:
            computing.clear()

    monkeypatch.setattr(UtteranceDataset, "__getitem__", reading)
    monkeypatch.setattr(model, "forward", forward)
    utts = read_manifest(manifest)
    res = extract_embeddings(model, utts, tmp_path / "e.h5", {}, ExtractOptions(workers=0, max_batch=4, device="cpu"))
    assert res.written == len(utts)
    assert overlaps == []
    assert readers == {threading.current_thread().name}
