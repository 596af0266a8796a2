"""A batch sampler whose position can be saved and restored, so a resumed run sees the same data.

:class:`ResumableSampler` is given to a ``DataLoader`` as ``batch_sampler``. Each epoch is a
permutation of the items drawn from a ``torch.Generator`` seeded with ``seed + epoch``, split
across the ranks of a distributed run, and cut into batches of ``batch_size`` indices (per rank).
Its state is ``(epoch, batches consumed in that epoch)``.

*Consumed*, not *yielded*: a ``DataLoader`` with workers asks for indices ahead of the training
loop (prefetching), so the loop must call :meth:`ResumableSampler.mark_consumed` once for every
batch it actually trains on. The :class:`~spkemb.train.trainer.Trainer` does this.

Per-item randomness (random crops, augmentation choices, noise SNRs, ...)
-------------------------------------------------------------------------
For a resumed run to be bit-for-bit the run that was never interrupted, *whatever the number of
workers*, a dataset must not draw from worker RNG state (``np.random``, ``random``, the global
torch generator in a worker): which worker loads which item, and how many items it loaded before,
changes between runs. Instead derive every random choice for an item from ``(seed, epoch, index)``
with :func:`item_rng`. The indices this sampler yields are :class:`EpochIndex` values: plain
``int`` subclasses (so ``data[i]`` works) that also carry ``.epoch``::

    def __getitem__(self, i):
        rng = item_rng(self.seed, getattr(i, "epoch", 0), int(i))
        start = rng.integers(0, n_samples - crop + 1)
        ...

A dataset may return ``None`` for an item it cannot read; the Trainer's collate drops it and
counts it (``skipped_items`` in metrics.jsonl).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


class EpochIndex(int):
    """An item index that also says which epoch asked for it (``.epoch``). Behaves as an ``int``."""

    epoch: int

    def __new__(cls, index: int, epoch: int) -> EpochIndex:
        obj = super().__new__(cls, index)
        obj.epoch = epoch
        return obj

    def __reduce__(self) -> tuple[Any, ...]:  # survive the trip to DataLoader workers
        return (EpochIndex, (int(self), self.epoch))

    def __repr__(self) -> str:
        return f"EpochIndex({int(self)}, epoch={self.epoch})"


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A numpy Generator determined by ``(seed, epoch, index)`` alone, for per-item randomness."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch), int(index)])))


class EpochSampler:
    """What the resumable batch samplers share: the position (``epoch``, ``consumed``), iteration over
    the rest of the current epoch, and a ``state_dict`` that refuses to resume another data order.

    A subclass sets ``batches_per_epoch``, implements ``epoch_batches(epoch)`` and names in
    ``IDENTITY`` the attributes that shape the data order (checked on resume).
    """

    IDENTITY: tuple[str, ...] = ()
    batches_per_epoch: int
    epoch: int = 0
    consumed: int = 0  # batches of self.epoch that the training loop has used

    def epoch_batches(self, epoch: int) -> list[list[int]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        """Batches in a whole epoch (a resumed epoch yields only the rest)."""
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[EpochIndex]]:
        """The batches of the current epoch not consumed yet; moves to the next epoch first when the
        current one is used up. Position changes only through :meth:`mark_consumed`."""
        if self.consumed >= self.batches_per_epoch:
            self.epoch += 1
            self.consumed = 0
        epoch, start = self.epoch, self.consumed
        batches = self.epoch_batches(epoch)[start:]
        return iter([[EpochIndex(i, epoch) for i in b] for b in batches])

    def mark_consumed(self, n: int = 1) -> None:
        """The training loop used ``n`` more batches of the current epoch."""
        self.consumed += n

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, **{k: int(getattr(self, k)) for k in self.IDENTITY}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position. The data order is only the same if the ``IDENTITY`` attributes are
        too; a mismatch (or a checkpoint of another kind of sampler) raises ValueError naming it."""
        missing = [k for k in self.IDENTITY if k not in state]
        differs = [f"{k} {state[k]} -> {getattr(self, k)}" for k in self.IDENTITY
                   if k in state and int(state[k]) != int(getattr(self, k))]  # fmt: skip
        if missing:
            differs.append(f"the checkpoint's sampler is of another kind (no {', '.join(missing)})")
        if differs:
            raise ValueError("the data order cannot be resumed: " + ", ".join(differs))
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])


class ResumableSampler(EpochSampler):
    """Epoch-seeded, rank-split, resumable batches of indices (a ``DataLoader`` ``batch_sampler``).

    ``batch_size`` is per rank. With ``drop_last`` (the default, and what contrastive losses want)
    every batch is full and the items that do not fill a batch on every rank are left out of that
    epoch (a different few each epoch); without it the permutation is padded by wrapping so every
    rank gets the same number of batches, the last one possibly short.
    """

    IDENTITY = ("n_items", "batch_size", "seed", "world_size")

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.n_items = int(n_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        if drop_last:
            self.per_rank = self.n_items // (self.world_size * self.batch_size) * self.batch_size
            self.batches_per_epoch = self.per_rank // self.batch_size
        else:
            self.per_rank = -(-self.n_items // self.world_size)
            self.batches_per_epoch = -(-self.per_rank // self.batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{self.n_items} items make no batch of {self.batch_size} per rank over {self.world_size} "
                f"rank(s); lower the batch size or use more data"
            )
        self.epoch = 0
        self.consumed = 0  # batches of self.epoch that the training loop has used

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for ``epoch`` (plain ints), the same on every call."""
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n_items, generator=g)
        total = self.per_rank * self.world_size
        if total > self.n_items:  # pad by wrapping around (drop_last=False)
            reps = -(-total // self.n_items)
            perm = perm.repeat(reps)
        mine = perm[:total][self.rank :: self.world_size].tolist()
        return [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
