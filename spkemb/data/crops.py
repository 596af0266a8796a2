"""Random multi-crop views of utterances for self-supervised pretraining.

A :data:`ViewSpec` lists groups of ``(n_crops, seconds)``: ``[(2, 2.0)]`` for MoCo and SimCLR (two
2-s crops of each utterance), ``[(M, 2.0)]`` for CEL, ``[(2, 3.0), (4, 1.5)]`` for DINO (two long
"global" crops then four short "local" ones). :class:`CropDataset` makes one item per utterance:
for every crop it draws an offset from the manifest's duration (no header is read), decodes only
those frames (a soundfile seek, at the file's own rate; resampled to the model's rate when they
differ; segment ``start``/``end`` respected), pads an utterance shorter than the crop by repeating
it, and runs the augmenter on each crop independently, except speed perturbation: the speed
factor is drawn once per item and applied to every crop (read ``factor`` times longer, then sped
up to the crop length), because the views of one utterance must not differ in pitch, a cue of who
speaks. (Supervised recipes, by contrast, treat each speed as a new speaker.)

With ``disjoint=True`` the crops of an item never share a sample when the utterance is long
enough for all of them (else they are drawn independently, as by default): overlapping views let
a model match crops by their common audio rather than by voice (on the demo's short synthetic
utterances this shortcut made self-supervised training worse than a random encoder).

All randomness of item ``i`` comes from :func:`~spkemb.data.sampler.item_rng` ``(seed, epoch, i)``,
so the crops of a resumed run are those of the uninterrupted run whatever the number of workers.
The epoch is taken from the index when the sampler yields
:class:`~spkemb.data.sampler.EpochIndex` values, else from :meth:`CropDataset.set_epoch`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spkemb.audio import crop_or_pad, load_audio, resample, speed_change
from spkemb.data.manifest import Utterance
from spkemb.data.sampler import item_rng
from spkemb.errors import InputError

__all__ = ["ViewSpec", "CropDataset", "collate_crops", "check_views", "disjoint_offsets", "measure_loader"]

ViewSpec = list[tuple[int, float]]
"""Groups of crops: ``[(n_crops, seconds), ...]``; every crop of a group has the same length."""


def check_views(views: Sequence[tuple[int, float]]) -> ViewSpec:
    """Validate and normalise a view spec (raises ``ValueError``)."""
    out: ViewSpec = []
    for group in views:
        try:
            n, sec = group
        except (TypeError, ValueError):
            raise ValueError(f"a view group is (n_crops, seconds), got {group!r}") from None
        if int(n) < 1 or float(sec) <= 0:
            raise ValueError(f"a view group needs n_crops >= 1 and seconds > 0, got {group!r}")
        out.append((int(n), float(sec)))
    if not out:
        raise ValueError("the view spec is empty")
    return out


class SkippedAudioWarning(UserWarning):
    """An utterance could not be read during training, or held NaN or infinite samples, and was left
    out of its batch."""


class CropDataset(Dataset):
    """Item ``i``: random crops of ``utts[i]``, grouped as ``views`` (see the module docstring).

    Returns ``{"views": [array (n_crops, samples) float32 per group], "index": i}``, or ``None``
    when the audio cannot be read (the Trainer's collate drops and counts those).
    ``augmenter(x, sample_rate, rng) -> (y, record)`` is applied to every crop on its own; a
    result whose length changed is cut or repeat-padded back to the crop length. When it is an
    :class:`~spkemb.augment.chain.Augmenter` with a ``speed`` step, that step is taken out and
    drawn once per item instead (see the module docstring).
    """

    def __init__(
        self,
        utts: Sequence[Utterance],
        sample_rate: int,
        views: Sequence[tuple[int, float]],
        augmenter: Any | None = None,
        seed: int = 0,
        disjoint: bool = False,
    ) -> None:
        self.utts = list(utts)
        self.disjoint = bool(disjoint)
        self.sample_rate = int(sample_rate)
        self.views = check_views(views)
        self.speed, self.p_speed = None, 0.0
        split = getattr(augmenter, "split", None)
        if callable(split):
            self.speed, self.p_speed, augmenter = split("speed")
            if len(augmenter) == 0:
                augmenter = None
        self.augmenter = augmenter
        self.seed = int(seed)
        self.epoch = 0
        self.lengths = [int(round(sec * self.sample_rate)) for _, sec in self.views]

    def set_epoch(self, epoch: int) -> None:
        """The epoch used when the index does not carry one (``DataLoader`` workers hold copies of
        the dataset: call this before they start, or use a sampler that yields ``EpochIndex``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.utts)

    @property
    def crops_per_item(self) -> int:
        return sum(n for n, _ in self.views)

    @property
    def speed_factors(self) -> tuple[float, ...]:
        """The speed factors an item may get: 1.0 first, then the others in the perturbation's order.
        An item's ``speed`` is its factor's position here (0 at normal speed)."""
        if self.speed is None:
            return (1.0,)
        return (1.0, *[f for f in self.speed.factors if f != 1.0])

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        index = int(i)
        epoch = int(getattr(i, "epoch", self.epoch))
        rng = item_rng(self.seed, epoch, index)
        u = self.utts[index]
        factor = 1.0
        if self.speed is not None and rng.random() < self.p_speed:
            factor = float(self.speed.draw(rng))
        try:
            groups = self._read_crops(u, rng, factor)  # (audio with NaN or infinite samples raises too)
        except InputError as err:
            # One line per bad file (warnings shows each distinct message once); the Trainer counts it.
            warnings.warn(f"skipping unreadable or bad training audio {err}", SkippedAudioWarning, stacklevel=1)
            return None
        if self.augmenter is not None:
            for g, length in zip(groups, self.lengths, strict=True):
                for k in range(len(g)):
                    y, _ = self.augmenter(g[k], self.sample_rate, rng)
                    g[k] = crop_or_pad(np.asarray(y, dtype=np.float32), length, mode="start")
            if not all(np.isfinite(g).all() for g in groups):
                warnings.warn(
                    f"skipping training audio {u.path}: augmentation made NaN or infinite samples "
                    "(a bad noise or RIR file?)",
                    SkippedAudioWarning,
                    stacklevel=1,
                )
                return None
        return {"views": [np.stack(g) for g in groups], "index": index, "speed": self.speed_factors.index(factor)}

    # -- reading -------------------------------------------------------------------------------

    def _span(self, u: Utterance) -> tuple[int, int, int]:
        """(file rate, first frame, frames available) of the utterance or segment."""
        fsr = int(u.sample_rate)
        if fsr <= 0:
            raise InputError(f"manifest gives sample_rate {u.sample_rate}", u.path)
        first = int(round(u.start * fsr)) if u.start else 0
        avail = int(math.floor(u.duration * fsr + 1e-6))
        if u.end is not None:
            to_end = int(round(u.end * fsr)) - first
            avail = min(avail, to_end) if avail > 0 else to_end
        return fsr, first, avail

    def _read_crops(self, u: Utterance, rng: np.random.Generator, factor: float = 1.0) -> list[list[np.ndarray]]:
        """The crops of ``u``, each read ``factor`` times the crop length and sped up by ``factor``."""
        fsr, first, avail = self._span(u)
        # Draw every offset first (a fixed number of draws per crop), then read.
        needs = [int(math.ceil(length * factor * fsr / self.sample_rate)) for length in self.lengths]
        plan: list[list[tuple[int, int, int]]] = []  # per group: (file offset, file frames, roll)
        sizes = [need for (n, _), need in zip(self.views, needs, strict=True) for _ in range(n)]
        if self.disjoint and len(sizes) > 1 and sum(sizes) <= avail:
            starts = iter(disjoint_offsets(sizes, avail, rng))
            plan = [[(next(starts), need, 0) for _ in range(n)] for (n, _), need in zip(self.views, needs, strict=True)]
        else:
            for (n, _), need in zip(self.views, needs, strict=True):
                group = []
                for _ in range(n):
                    if avail > need:
                        group.append((int(rng.integers(0, avail - need + 1)), need, 0))
                    else:  # whole utterance, repeated from a random starting point
                        group.append((0, -1, int(rng.integers(0, max(avail, 1)))))
                plan.append(group)
        whole: np.ndarray | None = None
        out: list[list[np.ndarray]] = []
        for group, length in zip(plan, self.lengths, strict=True):
            crops = []
            for off, frames, roll in group:
                if frames < 0:
                    if whole is None:
                        whole = self._sped(self._load(u, first, avail if avail > 0 else -1, fsr), factor)
                    shift = int(roll * self.sample_rate / fsr) % len(whole)
                    x = np.roll(whole, -shift) if shift else whole
                else:
                    x = self._sped(self._load(u, first + off, frames, fsr), factor)
                crops.append(crop_or_pad(x, length, mode="start"))
            out.append(crops)
        return out

    @staticmethod
    def _sped(x: np.ndarray, factor: float) -> np.ndarray:
        return x if factor == 1.0 else speed_change(x, factor)

    def _load(self, u: Utterance, start_frame: int, num_frames: int, fsr: int) -> np.ndarray:
        try:
            x = load_audio(u.path, start_frame=start_frame, num_frames=num_frames)
        except (OSError, RuntimeError, ValueError) as err:
            raise InputError(f"cannot read audio ({err})", u.path) from None
        return resample(x, fsr, self.sample_rate) if fsr != self.sample_rate else x


def disjoint_offsets(sizes: Sequence[int], avail: int, rng: np.random.Generator) -> list[int]:
    """Start offsets for spans of ``sizes`` that do not overlap within ``avail`` (``sum(sizes) <=
    avail``), in a random order along the utterance, uniformly placed: the slack left over is cut
    at ``len(sizes)`` sorted uniform points and a span follows each cut."""
    order = rng.permutation(len(sizes))
    cuts = np.sort(rng.integers(0, avail - sum(sizes) + 1, size=len(sizes)))
    starts = [0] * len(sizes)
    pos = 0
    for cut, k in zip(cuts, order, strict=True):
        starts[int(k)] = int(cut) + pos
        pos += sizes[int(k)]
    return starts


def resample_note(utts: Sequence[Utterance], rate: int) -> str | None:
    """A notice when some of ``utts`` are at another sample rate than the model's ``rate`` (they are
    resampled on the fly: 8-kHz audio holds nothing above 4 kHz, which a 16-kHz model expects)."""
    rates: dict[int, int] = {}
    for u in utts:
        if int(u.sample_rate) != rate:
            rates[int(u.sample_rate)] = rates.get(int(u.sample_rate), 0) + 1
    if not rates:
        return None
    found = ", ".join(f"{n} at {r / 1000:g} kHz" for r, n in sorted(rates.items()))
    n = sum(rates.values())
    return f"note: {n} of {len(utts)} utterances ({found}) are resampled to the model's {rate / 1000:g} kHz"


def collate_crops(items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack items of :class:`CropDataset` into a batch.

    Returns ``{"views": [float32 tensor (B, n_crops, samples) per group], "index": long tensor (B,),
    "speed": long tensor (B,), "skipped": number of ``None`` items left out}``. ``index`` holds the
    utterance (manifest row) of each batch row, so a method can tell when two rows are the same
    utterance; ``speed`` the position of its speed factor in :attr:`CropDataset.speed_factors` (0 when
    not sped up), so supervised training can make each speed a class of its own.
    """
    kept = [it for it in items if it is not None]
    skipped = len(items) - len(kept)
    if not kept:
        empty = torch.zeros(0, dtype=torch.long)
        return {"views": [], "index": empty, "speed": empty, "skipped": skipped}
    n_groups = len(kept[0]["views"])
    views = [torch.from_numpy(np.stack([it["views"][g] for it in kept])) for g in range(n_groups)]
    index = torch.tensor([int(it["index"]) for it in kept], dtype=torch.long)
    speed = torch.tensor([int(it.get("speed", 0)) for it in kept], dtype=torch.long)
    return {"views": views, "index": index, "speed": speed, "skipped": skipped}


def measure_loader(dataset: CropDataset, batch_size: int, workers: int, seconds: float) -> float:
    """Crops per second that a ``DataLoader`` over ``dataset`` delivers.

    Timing starts when the first batch arrives (worker start-up is not counted) and stops after
    ``seconds`` (at least one more batch). Epochs repeat as needed.
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate_crops,
        persistent_workers=workers > 0,
        drop_last=False,
    )
    crops = 0
    start: float | None = None
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        for batch in loader:
            if start is None:
                start = time.perf_counter()
                continue
            crops += sum(int(v.shape[0] * v.shape[1]) for v in batch["views"])
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return crops / elapsed
        epoch += 1
