"""The P x K speaker-balanced sampler: batch shape, epoch coverage, exact resume, DDP sharding, errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from spkemb.data.pk_sampler import PKSampler, pk_capacity
from spkemb.data.sampler import EpochIndex
from spkemb.errors import InputError


def _labels(counts: list[int], seed: int = 0) -> np.ndarray:
    """Speaker s has counts[s] items; items are interleaved, not grouped by speaker."""
    lab = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(lab)


def _check_batch(batch: list[int], labels: np.ndarray, p: int, k: int) -> None:
    assert len(batch) == p * k
    rows = labels[np.asarray(batch)].reshape(p, k)
    assert len(set(rows[:, 0].tolist())) == p, "P distinct speakers"
    assert (rows == rows[:, :1]).all(), "each row of K items is one speaker"


def test_every_batch_is_p_distinct_speakers_times_k_items() -> None:
    labels = _labels([9, 7, 5, 4, 3, 2, 1, 12, 6, 8])  # uneven, some below K
    sampler = PKSampler(labels, p=4, k=3, seed=1)
    for epoch in range(4):
        batches = sampler.epoch_batches(epoch)
        assert len(batches) == sampler.batches_per_epoch == len(sampler) > 0
        for b in batches:
            _check_batch(b, labels, 4, 3)
            # distinct items within a speaker's group unless the speaker has fewer than K items
            rows = np.asarray(b).reshape(4, 3)
            for row in rows:
                if Counter(labels.tolist())[int(labels[row[0]])] >= 3:
                    assert len(set(row.tolist())) == 3
        flat = [i for b in batches for i in b]
        big = [i for i in flat if Counter(labels.tolist())[int(labels[i])] >= 3]
        assert len(big) == len(set(big)), "an item is used at most once per epoch (speakers with >= K items)"
    assert sampler.epoch_batches(0) == sampler.epoch_batches(0)
    assert sampler.epoch_batches(0) != sampler.epoch_batches(1)


def test_speakers_below_k_draw_with_replacement_and_balanced_corpus_covers_everything() -> None:
    one_each = np.arange(10)  # one recording per speaker
    s = PKSampler(one_each, p=5, k=2, seed=0)
    assert s.batches_per_epoch == 2
    for b in s.epoch_batches(0):
        rows = np.asarray(b).reshape(5, 2)
        assert (rows[:, 0] == rows[:, 1]).all()  # the only item, twice
    k1 = PKSampler(one_each, p=3, k=1, seed=0)  # K = 1: views come from crops
    assert k1.batches_per_epoch == 3
    used = [i for b in k1.epoch_batches(0) for i in b]
    assert len(used) == 9 == len(set(used))
    left_out = {int(next(iter(set(range(10)) - set(u for b in k1.epoch_batches(e) for u in b)))) for e in range(8)}
    assert len(left_out) > 1, "a different speaker is left out in different epochs"
    balanced = _labels([4] * 6)
    full = PKSampler(balanced, p=3, k=2, seed=2)
    assert sorted(i for b in full.epoch_batches(0) for i in b) == list(range(24))


def test_capacity_is_the_most_batches_of_p_distinct_speakers() -> None:
    assert pk_capacity([10, 1, 1], 2) == 2  # the big speaker needs a partner in every batch
    assert pk_capacity([3, 3, 3, 3], 2) == 6
    assert pk_capacity([5], 2) == 0
    assert pk_capacity([1] * 7, 3) == 2
    dominant = _labels([30, 2, 2, 2])  # K=1: 36 items, but only 6 batches of 2 distinct speakers...
    s = PKSampler(dominant, p=2, k=1, seed=0)
    assert s.batches_per_epoch == 6  # ...the dominant speaker in each, with one of the others
    for b in s.epoch_batches(0):
        _check_batch(b, dominant, 2, 1)


def test_exact_resume_mid_epoch_gives_the_same_remaining_batches() -> None:
    labels = _labels([6, 5, 4, 7, 3, 8, 2])
    a = PKSampler(labels, p=3, k=2, seed=7)
    stream: list[list[int]] = []
    for _ in range(3):  # three epochs, uninterrupted
        for batch in a:
            stream.append([int(i) for i in batch])
            a.mark_consumed()
    n = a.batches_per_epoch
    cut = n + 2  # interrupt two batches into the second epoch
    b = PKSampler(labels, p=3, k=2, seed=7)
    seen: list[list[int]] = []
    for batch in b:
        seen.append([int(i) for i in batch])
        b.mark_consumed()
    it = iter(b)
    for _ in range(2):
        seen.append([int(i) for i in next(it)])
        b.mark_consumed()
    state = b.state_dict()
    assert state["epoch"] == 1 and state["consumed"] == 2 and len(seen) == cut
    state = torch.load(_roundtrip(state), weights_only=True)
    c = PKSampler(labels, p=3, k=2, seed=7)
    c.load_state_dict(state)
    while len(seen) < len(stream):
        for batch in c:
            seen.append([int(i) for i in batch])
            c.mark_consumed()
    assert seen == stream
    first = next(iter(PKSampler(labels, p=3, k=2, seed=7)))
    assert all(isinstance(i, EpochIndex) and i.epoch == 0 for i in first)


def _roundtrip(obj: object) -> object:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_resume_refuses_other_labels_or_settings() -> None:
    labels = _labels([4, 4, 4, 4])
    state = PKSampler(labels, p=2, k=2, seed=0).state_dict()
    relabelled = labels.copy()
    relabelled[0] = (relabelled[0] + 1) % 4
    for other in (
        PKSampler(relabelled, p=2, k=2, seed=0),
        PKSampler(labels, p=2, k=1, seed=0),
        PKSampler(labels, p=2, k=2, seed=1),
        PKSampler(labels, p=2, k=2, seed=0, world_size=2),
    ):
        with pytest.raises(ValueError, match="cannot be resumed"):
            other.load_state_dict(state)
    with pytest.raises(ValueError, match="another kind"):  # a ResumableSampler's state
        PKSampler(labels, p=2, k=2, seed=0).load_state_dict({"epoch": 0, "consumed": 0, "batch_size": 4})


def test_ranks_get_disjoint_batches_of_equal_count() -> None:
    labels = _labels([7, 6, 5, 5, 4, 9, 3, 2, 8])
    world = 3
    ranks = [PKSampler(labels, p=3, k=2, seed=5, rank=r, world_size=world) for r in range(world)]
    alone = PKSampler(labels, p=3, k=2, seed=5)
    assert len({s.batches_per_epoch for s in ranks}) == 1
    assert ranks[0].batches_per_epoch == pk_capacity(alone.groups, 3) // world
    for epoch in range(3):
        per_rank = [s.epoch_batches(epoch) for s in ranks]
        everything = ranks[0].all_batches(epoch)
        assert [b for r in range(world) for b in per_rank[r]] != []
        for r in range(world):
            assert per_rank[r] == everything[r::world]
            for b in per_rank[r]:
                _check_batch(b, labels, 3, 2)
        items = [set(i for b in per_rank[r] for i in b) for r in range(world)]
        for r in range(world):
            for q in range(r + 1, world):
                assert not items[r] & items[q]


def test_errors_for_too_few_speakers_and_bad_settings() -> None:
    with pytest.raises(InputError, match="at least 2"):
        PKSampler([0, 0, 0, 0], p=2, k=2, seed=0)
    with pytest.raises(InputError, match="at least 2"):
        PKSampler([0, 0, -1, -1], p=2, k=1, seed=0)  # negative labels are left out
    with pytest.raises(InputError, match="only 3 speakers"):
        PKSampler([0, 1, 2, 0, 1, 2], p=4, k=1, seed=0)
    with pytest.raises(InputError, match="fewer than the 4 ranks"):
        PKSampler([0, 1, 2, 3], p=2, k=1, seed=0, world_size=4)
    with pytest.raises(ValueError, match="P >= 2"):
        PKSampler([0, 1], p=1, k=1, seed=0)
    with pytest.raises(ValueError, match="P >= 2"):
        PKSampler([0, 1], p=2, k=0, seed=0)
    with pytest.raises(ValueError, match="integers"):
        PKSampler([0.5, 1.0], p=2, k=1, seed=0)
    with pytest.raises(ValueError, match="rank"):
        PKSampler([0, 1], p=2, k=1, seed=0, rank=2, world_size=2)
    s = PKSampler.from_batch_size([0, 1, 2, 3, -1, 0, 1, 2, 3], batch_size=9, k=2, seed=0)
    assert (s.p, s.k, s.batch_size) == (4, 2, 8)
    assert all(4 not in b for e in range(3) for b in s.epoch_batches(e))


def test_drives_a_dataloader_as_batch_sampler() -> None:
    labels = _labels([3, 3, 3, 3])
    sampler = PKSampler(labels, p=2, k=3, seed=0)
    loader = DataLoader(list(range(len(labels))), batch_sampler=sampler)
    got = [b.tolist() for b in loader]
    assert got == sampler.epoch_batches(0) and all(len(b) == 6 for b in got)
