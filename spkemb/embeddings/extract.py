"""Batched, resumable extraction of embeddings from a manifest into an HDF5 store."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from spkemb.data.manifest import Utterance
from spkemb.data.utterances import ListBatchSampler, UtteranceDataset, bucket_batches, collate
from spkemb.embeddings.store import StoreWriter
from spkemb.errors import InputError
from spkemb.runtime import autocast, resolve_device, tune_cpu_allocator, worker_init


@dataclass
class ExtractOptions:
    batch_seconds: float = 120.0   # padded audio seconds per batch
    max_batch: int = 64
    workers: int | None = None    # None: 0 on the CPU (decoding in a worker steals the model's cores), 4 on CUDA
    chunk: float | None = None     # seconds; average embeddings of windows of long utterances
    hop: float | None = None
    vad: bool = False
    precision: str = "fp32"
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.chunk is not None and self.chunk <= 0:
            raise InputError(f"--chunk {self.chunk}: must be a positive number of seconds")
        if self.hop is not None and (self.hop <= 0 or self.chunk is None):
            raise InputError(f"--hop {self.hop}: needs --chunk, and must be positive")
        if self.batch_seconds <= 0 or self.max_batch < 1:
            raise InputError("--batch-seconds and --max-batch must be positive")

    def identity(self) -> dict:
        """What changes the embeddings (and so must match to resume)."""
        return {"chunk": self.chunk, "hop": self.hop, "vad": self.vad, "precision": self.precision}


@dataclass
class ExtractResult:
    path: Path
    written: int
    resumed: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``I/N`` (0-based I) -> (I, N)."""
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise InputError(f"--shard {spec!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {spec!r}: need 0 <= I < N")
    return i, n


def shard_rows(n: int, shard: tuple[int, int]) -> list[int]:
    """Contiguous slice ``I`` of ``N`` of the rows 0..n-1."""
    i, k = shard
    return list(range(n * i // k, n * (i + 1) // k))


def extract_embeddings(
    model: torch.nn.Module,
    utts: Sequence[Utterance],
    out: str | Path,
    attrs: dict,
    opts: ExtractOptions,
    on_progress: Callable[[float, int], None] | None = None,
) -> ExtractResult:
    """Embed every utterance of ``utts`` (in order) into the store ``out``.

    Rows already present in ``out.partial`` from an interrupted run with the same encoder and
    options are kept. ``on_progress(audio_seconds, n_utts)`` is called after each batch. Utterances
    that fail to decode are reported in the result and left out of the store.
    """
    if not utts:
        raise InputError("nothing to extract: no utterances (an empty manifest, or a shard with no rows)")
    device = resolve_device(opts.device)
    ctx_check = autocast(device, opts.precision)  # validates precision for the device early
    del ctx_check
    if device.type == "cpu":
        tune_cpu_allocator()
    model = model.to(device).eval()
    dim = int(model.embed_dim)
    ids = [u.utt_id for u in utts]
    speakers = [u.speaker for u in utts]
    attrs = {**attrs, "options": opts.identity(), "sample_rate": int(model.sample_rate)}
    writer = StoreWriter.open(out, ids, dim, attrs, speakers)
    t0 = time.monotonic()
    failed: list[tuple[str, str]] = []
    audio = 0.0
    try:
        done = writer.done_mask()
        todo = np.flatnonzero(~done)
        if on_progress and writer.resumed:
            on_progress(sum(utts[i].duration for i in np.flatnonzero(done)), writer.resumed)
        durations = [_effective_seconds(utts[i].duration, opts) for i in todo]
        workers = opts.workers if opts.workers is not None else (0 if device.type == "cpu" else 4)
        dataset = UtteranceDataset(utts, todo, int(model.sample_rate), opts.chunk, opts.hop, opts.vad)
        batches = bucket_batches(durations, opts.batch_seconds, opts.max_batch)
        loader = DataLoader(
            dataset,
            batch_sampler=ListBatchSampler(batches),
            collate_fn=collate,
            num_workers=workers,
            worker_init_fn=worker_init if workers else None,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers else None,
        )
        written = writer.resumed
        with torch.inference_mode():
            for batch in loader:
                for row, err in batch.errors:
                    failed.append((utts[row].path, err))
                if batch.rows:
                    emb = embed_batch(model, batch.wav, batch.lengths, batch.owner, len(batch.rows), device,
                                      opts.precision)
                    writer.write(np.asarray(batch.rows), emb)
                    written += len(batch.rows)
                secs = sum(utts[r].duration for r in batch.rows) + sum(utts[r].duration for r, _ in batch.errors)
                audio += secs
                if on_progress:
                    on_progress(secs, len(batch.rows) + len(batch.errors))
        if failed:
            # Rows that could not be decoded stay out: rebuild the store without them.
            writer.close()
            return _finish_without_failed(out, utts, failed, writer.resumed, audio, t0)
        path = writer.finish()
    finally:
        writer.close()
    return ExtractResult(path, written, writer.resumed, failed, audio, time.monotonic() - t0)


def _effective_seconds(d: float, opts: ExtractOptions) -> float:
    if opts.chunk and d > opts.chunk:
        n = int(np.ceil((d - opts.chunk) / (opts.hop or opts.chunk))) + 1
        return n * opts.chunk
    return d


def embed_batch(
    model: torch.nn.Module,
    wav: torch.Tensor,
    lengths: torch.Tensor,
    owner: torch.Tensor,
    n_rows: int,
    device: torch.device,
    precision: str = "fp32",
) -> np.ndarray:
    """Embed padded pieces and average each row's pieces -> (n_rows, D).

    Pieces are averaged raw, so a chunked row has the same scale as an unchunked one (scores that
    normalise embeddings before cosine, e.g. cohort standardisation, need one scale for all rows).
    """
    wav = wav.to(device, non_blocking=True)
    lengths = lengths.to(device)
    with autocast(device, precision):
        emb = model(wav, lengths)
    emb = emb.float()
    if len(owner) == n_rows:
        return emb.cpu().numpy()
    owner = owner.to(device)
    summed = torch.zeros(n_rows, emb.shape[1], device=device).index_add_(0, owner, emb)
    counts = torch.bincount(owner, minlength=n_rows).clamp(min=1).unsqueeze(1)
    return (summed / counts).cpu().numpy()


def _finish_without_failed(
    out: str | Path, utts: Sequence[Utterance], failed: list[tuple[str, str]], resumed: int, audio: float,
    t0: float,
) -> ExtractResult:
    import h5py

    from spkemb.embeddings.store import partial_path, write_embeddings

    part = partial_path(out)
    with h5py.File(part, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        mask = f["written"][()]
        vectors = f["embedding"][()][mask]
    keep = [u for u, m in zip(utts, mask, strict=True) if m]  # a failed row is never marked written
    if not keep:
        part.unlink(missing_ok=True)
        raise InputError(f"no utterance could be read (first: {failed[0][0]}: {failed[0][1]})")
    attrs = {k: v for k, v in attrs.items() if k not in ("complete", "format", "format_version", "created")}
    attrs["failed"] = len(failed)
    path = write_embeddings(out, [u.utt_id for u in keep], vectors, [u.speaker for u in keep], attrs)
    part.unlink(missing_ok=True)
    return ExtractResult(path, len(keep), resumed, failed, audio, time.monotonic() - t0)

