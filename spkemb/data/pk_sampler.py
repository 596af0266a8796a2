"""A speaker-balanced batch sampler: ``P`` speakers x ``K`` items per batch, resumable like
:class:`~spkemb.data.sampler.ResumableSampler`.

Losses over labels (AAM softmax, SupCon) want several speakers per batch and, for SupCon,
several items of each. :class:`PKSampler` is given to a ``DataLoader`` as ``batch_sampler`` and
has the interface of ``ResumableSampler`` (``epoch``, ``consumed``, ``mark_consumed()``,
``batches_per_epoch``, ``batch_size``, ``state_dict()`` / ``load_state_dict()``, yields
:class:`~spkemb.data.sampler.EpochIndex` values), so the Trainer drives it the same way.

An epoch (all randomness from ``seed`` and ``epoch`` alone, the same on every rank):

1. Every speaker's items are shuffled and cut into *groups* of ``K``; the ``n mod K`` left over
   are left out of this epoch (a different few each epoch). **A speaker with fewer than ``K``
   items** makes one group: all its items, then draws *with replacement* from them up to ``K``
   (so a corpus with one recording per speaker still trains; with ``K=1`` nothing repeats, and
   the views a contrastive loss needs come from several crops of each item instead, see
   :class:`~spkemb.data.crops.CropDataset`). A repeated item in a batch is the same index, so a
   dataset whose randomness is keyed by ``(seed, epoch, index)`` gives it the same crops.
2. Batches are drawn one at a time: ``P`` distinct speakers, with probability proportional to
   their remaining groups (a speaker that must appear in every remaining batch to place all its
   groups is always taken), one group each. A batch lists its ``P`` groups one after the other:
   ``batch.view(P, K)`` has one speaker per row.
3. The number of batches ``B`` is the largest that ``P`` distinct speakers per batch allow,
   ``max b : sum_s min(groups_s, b) >= P * b``, rounded down to a multiple of the world size (it
   is the same every epoch). A speaker with more than ``B`` groups places only ``B`` of them, and
   groups drawn at random are left out until exactly ``P * B`` remain (with one recording per
   speaker and ``K=1``: ``B = n_speakers // P``, and the speakers left out change every epoch).
   Rank ``r`` of ``W`` takes batches ``r, r + W, ...``: every rank gets the same number of
   batches, and within an epoch no item is on two ranks.

Items whose label is negative are left out (unlabelled). Fewer than 2 speakers, or fewer than
``P``, raise :class:`~spkemb.errors.InputError`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from spkemb.data.sampler import EpochSampler
from spkemb.errors import InputError

__all__ = ["PKSampler", "pk_capacity"]


def pk_capacity(groups: Sequence[int] | np.ndarray, p: int) -> int:
    """The most batches of ``p`` distinct speakers that speakers with ``groups[s]`` groups make:
    the largest ``b`` with ``sum_s min(groups[s], b) >= p * b`` (0 if fewer than ``p`` speakers)."""
    g = np.asarray(groups, dtype=np.int64)
    lo, hi = 0, int(g.sum()) // max(p, 1)
    while lo < hi:  # the condition holds for b <= answer and fails above it
        mid = (lo + hi + 1) // 2
        if int(np.minimum(g, mid).sum()) >= p * mid:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PKSampler(EpochSampler):
    """``P`` speakers x ``K`` items per batch (per rank), epoch-seeded, rank-split and resumable.

    ``labels[i]`` is item ``i``'s speaker (ints; negative = leave the item out). See the module
    docstring for how an epoch is made. ``batch_size`` is ``P * K``; :meth:`from_batch_size`
    derives ``P`` from a batch size and ``K``.
    """

    IDENTITY = ("n_items", "p", "k", "seed", "world_size", "labels_crc")

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        p: int,
        k: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if p < 2 or k < 1:
            raise ValueError(f"a P x K batch needs P >= 2 speakers and K >= 1 items, got P={p}, K={k}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        lab = np.asarray(labels)
        if lab.ndim != 1 or (lab.size and not np.issubdtype(lab.dtype, np.integer)):
            raise ValueError("labels must be a 1-D sequence of integers")
        self.p, self.k = int(p), int(k)
        self.batch_size = self.p * self.k
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.n_items = int(lab.size)
        lab = lab.astype(np.int64)
        self.labels_crc = zlib.crc32(lab.tobytes())
        used = np.flatnonzero(lab >= 0)
        speakers, inverse = np.unique(lab[used], return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(speakers)))[:-1]
        self.items: list[np.ndarray] = np.split(used[order], bounds) if len(speakers) else []
        self.n_speakers = len(speakers)
        if self.n_speakers < 2:
            raise InputError(f"{self.n_speakers} speaker(s) with labelled items; a P x K batch needs at least 2")
        if self.n_speakers < self.p:
            raise InputError(
                f"only {self.n_speakers} speakers for batches of P={self.p} distinct speakers; lower P "
                f"(the batch size) to at most {self.n_speakers}"
            )
        self.groups = np.array([max(1, len(it) // self.k) for it in self.items], dtype=np.int64)
        total = pk_capacity(self.groups, self.p)
        self.batches_per_epoch = total // self.world_size
        if self.batches_per_epoch == 0:
            raise InputError(
                f"{self.n_speakers} speakers make {total} batch(es) of P={self.p} distinct speakers, fewer than "
                f"the {self.world_size} ranks; lower P or use more data"
            )
        self.epoch = 0
        self.consumed = 0  # batches of self.epoch that the training loop has used

    @classmethod
    def from_batch_size(
        cls, labels: Sequence[int] | np.ndarray, batch_size: int, k: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> PKSampler:
        """``P = batch_size // k`` (the batch is ``P * k``, at most ``batch_size``)."""
        return cls(labels, batch_size // k, k, seed, rank, world_size)

    def _speaker_groups(self, rng: np.random.Generator, n_batches: int) -> list[list[np.ndarray]]:
        """Per speaker: its groups of K items for this epoch, at most ``n_batches`` of them."""
        out = []
        for items, n_groups in zip(self.items, self.groups, strict=True):
            if len(items) >= self.k:
                perm = rng.permutation(items)
                groups = [perm[j * self.k : (j + 1) * self.k] for j in range(int(n_groups))]
            else:  # fewer than K: all of them, then draws with replacement
                extra = rng.choice(items, size=self.k - len(items), replace=True)
                groups = [rng.permutation(np.concatenate([items, extra]))]
            if len(groups) > n_batches:
                keep = np.sort(rng.choice(len(groups), size=n_batches, replace=False))
                groups = [groups[j] for j in keep]
            out.append(groups)
        return out

    def all_batches(self, epoch: int) -> list[list[int]]:
        """Every rank's batches for ``epoch``, in order (rank ``r`` takes ``r::world_size``)."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, int(epoch), 0x504B])))
        n_batches = self.batches_per_epoch * self.world_size
        per_speaker = self._speaker_groups(rng, n_batches)
        left = np.array([len(g) for g in per_speaker], dtype=np.int64)
        # Leave out groups drawn at random until exactly P * n_batches remain (each speaker's
        # count stays <= n_batches, so the draw below can always fill every batch).
        excess = int(left.sum()) - self.p * n_batches
        if excess > 0:
            drop = rng.choice(int(left.sum()), size=excess, replace=False)
            left -= np.bincount(np.repeat(np.arange(self.n_speakers), left)[drop], minlength=self.n_speakers)
        batches: list[list[int]] = []
        for remaining in range(n_batches, 0, -1):
            forced = np.flatnonzero(left == remaining)
            free = np.flatnonzero((left > 0) & (left < remaining))
            n_free = self.p - len(forced)
            picked = np.zeros(0, dtype=np.int64)
            if n_free:
                picked = rng.choice(free, size=n_free, replace=False, p=left[free] / left[free].sum())
            chosen = rng.permutation(np.concatenate([forced, picked]))
            batch: list[int] = []
            for s in chosen:
                left[s] -= 1
                batch.extend(int(i) for i in per_speaker[s][int(left[s])])
            batches.append(batch)
        return batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for ``epoch`` (plain ints), the same on every call."""
        return self.all_batches(epoch)[self.rank :: self.world_size]
