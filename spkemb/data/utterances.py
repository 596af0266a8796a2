"""Whole-utterance loading for extraction: a dataset that decodes (and optionally chunks) each
utterance, and length-bucketed batches so that padding stays small."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from spkemb.audio import energy_vad, load_audio
from spkemb.data.manifest import Utterance
from spkemb.errors import InputError


@dataclass
class Loaded:
    """One decoded item: the row it belongs to, its waveform pieces (chunks), or the error."""

    row: int
    pieces: list[np.ndarray]
    error: str | None = None


class UtteranceDataset(Dataset):
    """Decodes utterance ``rows[i]`` of ``utts`` at ``sample_rate``.

    With ``chunk`` seconds, an utterance longer than a chunk is cut into windows every ``hop``
    seconds (the last window ends at the end); the caller averages their embeddings. Unreadable
    audio yields an item with ``error`` set instead of raising, so one bad file cannot stop a run.
    """

    def __init__(
        self,
        utts: Sequence[Utterance],
        rows: Sequence[int],
        sample_rate: int,
        chunk: float | None = None,
        hop: float | None = None,
        vad: bool = False,
        min_seconds: float = 0.5,
    ) -> None:
        self.utts, self.rows, self.sr = utts, list(rows), sample_rate
        self.chunk = int(chunk * sample_rate) if chunk else None
        self.hop = int((hop or chunk or 0) * sample_rate) or None
        self.vad = vad
        self.min_len = int(min_seconds * sample_rate)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Loaded:
        row = self.rows[i]
        u = self.utts[row]
        try:
            x = load_audio(u.path, self.sr, u.start, u.end)
        except InputError as err:
            return Loaded(row, [], err.message)
        return Loaded(row, self.pieces(x))

    def pieces(self, x: np.ndarray) -> list[np.ndarray]:
        """The encoder inputs of decoded audio ``x``: after VAD, repeated up to the minimum length,
        and cut into windows when chunking (their embeddings are averaged)."""
        if self.vad:
            x = energy_vad(x, self.sr)
        if len(x) < self.min_len:
            # Too short for a stable embedding (and for the convolutions): repeat it to min length.
            x = np.tile(x, -(-self.min_len // max(len(x), 1)))[: self.min_len]
        if self.chunk and len(x) > self.chunk:
            starts = list(range(0, len(x) - self.chunk + 1, self.hop or self.chunk))
            if starts[-1] + self.chunk < len(x):
                starts.append(len(x) - self.chunk)
            return [x[s : s + self.chunk] for s in starts]
        return [x]


@dataclass
class Batch:
    rows: list[int]  # store rows of the utterances in this batch
    wav: torch.Tensor  # (P, S) padded pieces
    lengths: torch.Tensor  # (P,) valid samples per piece
    owner: torch.Tensor  # (P,) index into ``rows`` of each piece
    errors: list[tuple[int, str]]  # rows that failed to decode

    def pin_memory(self) -> Batch:
        """Page-locked copies of the tensors (the DataLoader calls this with ``pin_memory=True``; without
        it a dataclass batch would not be pinned and the copies to the GPU would not overlap)."""
        return Batch(self.rows, self.wav.pin_memory(), self.lengths.pin_memory(), self.owner.pin_memory(), self.errors)


def collate(items: list[Loaded]) -> Batch:
    ok = [it for it in items if it.error is None]
    pieces = [p for it in ok for p in it.pieces]
    owner = [k for k, it in enumerate(ok) for _ in it.pieces]
    longest = max((len(p) for p in pieces), default=0)
    wav = torch.zeros(len(pieces), longest)
    for k, p in enumerate(pieces):
        wav[k, : len(p)] = torch.from_numpy(p)
    return Batch(
        rows=[it.row for it in ok],
        wav=wav,
        lengths=torch.tensor([len(p) for p in pieces], dtype=torch.long),
        owner=torch.tensor(owner, dtype=torch.long),
        errors=[(it.row, it.error) for it in items if it.error is not None],
    )


def bucket_batches(durations: Sequence[float], max_seconds: float = 120.0, max_items: int = 64) -> list[list[int]]:
    """Indices grouped by similar duration, each batch holding at most ``max_seconds`` of padded
    audio (longest x count) and ``max_items`` items. Longest first, so memory peaks early."""
    order = np.argsort(-np.asarray(durations, dtype=float), kind="stable")
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0.0
    for i in order:
        d = float(durations[i])
        longest_if = max(longest, d)
        if cur and (longest_if * (len(cur) + 1) > max_seconds or len(cur) >= max_items):
            batches.append(cur)
            cur, longest_if = [], d
        cur.append(int(i))
        longest = longest_if
    if cur:
        batches.append(cur)
    return batches


class ListBatchSampler:
    """A batch sampler over precomputed index lists."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
