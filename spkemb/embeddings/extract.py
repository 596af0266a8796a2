"""Batched, resumable extraction of embeddings from a manifest into an HDF5 store.

The checks that come before any work (:mod:`spkemb.embeddings.plan`, torch-free) are re-exported here.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from spkemb.data.manifest import Utterance
from spkemb.data.utterances import Batch, ListBatchSampler, UtteranceDataset, collate
from spkemb.embeddings.plan import (
    ExtractOptions,
    check_outputs,
    padded_batches,
    parse_shard,
    shard_rows,
    utterances_digest,
)
from spkemb.embeddings.store import StoreWriter
from spkemb.errors import InputError
from spkemb.utils.runtime import autocast, resolve_device, tune_cpu_allocator, worker_init

__all__ = [
    "ExtractOptions",
    "ExtractResult",
    "check_outputs",
    "parse_shard",
    "shard_rows",
    "extract_embeddings",
    "embed_batch",
]


@dataclass
class ExtractResult:
    path: Path
    written: int
    resumed: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0


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
    that fail to decode are reported in the result and left out of the store. The store records
    ``manifest_sha256`` (:func:`~spkemb.embeddings.plan.utterances_digest` of ``utts``), by which a
    rerun can tell it has nothing to do.
    """
    if not utts:
        raise InputError("nothing to extract: no utterances (an empty manifest, or a shard with no rows)")
    device = resolve_device(opts.device)
    ctx_check = autocast(device, opts.precision)  # validates precision for the device early
    del ctx_check
    if device.type == "cpu":
        tune_cpu_allocator()
    model = model.to(device).eval()
    if opts.precision == "int8" and getattr(model, "config", {}).get("runtime") != "onnxruntime-int8":
        # (CPU only: refused above on CUDA; an encoder quantise_int8 made is used as it is)
        from spkemb.embeddings.quantize import quantize_int8

        model = quantize_int8(model, torch.get_num_threads())
    opts = default_chunk(model, opts)
    dim = int(model.embed_dim)  # type: ignore[arg-type]  # an encoder's int attribute
    sample_rate = int(model.sample_rate)  # type: ignore[arg-type]
    ids = [u.utt_id for u in utts]
    speakers = [u.speaker for u in utts]
    attrs = {
        **attrs,
        "options": opts.identity(),
        "sample_rate": sample_rate,
        "manifest_sha256": utterances_digest(utts),
    }
    writer = StoreWriter.open(out, ids, dim, attrs, speakers)
    t0 = time.monotonic()
    failed: list[tuple[int, str]] = []  # (row, problem)
    audio = 0.0
    try:
        done = writer.done_mask()
        todo = np.flatnonzero(~done).tolist()
        if on_progress and writer.resumed:
            on_progress(sum(utts[i].duration for i in np.flatnonzero(done).tolist()), writer.resumed)
        durations = [_effective_seconds(utts[i].duration, opts) for i in todo]
        workers = opts.workers if opts.workers is not None else (0 if device.type == "cpu" else 4)
        dataset = UtteranceDataset(utts, todo, sample_rate, opts.chunk, opts.hop, opts.vad)
        batches = padded_batches(durations, opts.batch_seconds, opts.max_batch)
        loader: Iterable[Batch]
        if workers:
            loader = DataLoader(
                dataset,
                batch_sampler=ListBatchSampler(batches),
                collate_fn=collate,
                num_workers=workers,
                worker_init_fn=worker_init,
                pin_memory=device.type == "cuda",
                prefetch_factor=4,
            )
        elif device.type == "cuda":
            loader = Prefetch(dataset, batches, pin=True)
        else:
            loader = read_between_forwards(dataset, batches)
        written = writer.resumed
        with torch.inference_mode():
            for batch in loader:
                for row, err in batch.errors:
                    failed.append((row, err))
                if batch.rows:
                    emb = embed_batch(
                        model, batch.wav, batch.lengths, batch.owner, len(batch.rows), device, opts.precision
                    )
                    finite = np.isfinite(emb).all(axis=1)
                    rows = np.asarray(batch.rows)
                    # Finite audio can still overflow an encoder: such a row is a failed one, never stored.
                    failed += [(int(r), "the encoder gave a non-finite embedding") for r in rows[~finite]]
                    writer.write(rows[finite], emb[finite])
                    written += int(finite.sum())
                secs = sum(utts[r].duration for r in batch.rows) + sum(utts[r].duration for r, _ in batch.errors)
                audio += secs
                if on_progress:
                    on_progress(secs, len(batch.rows) + len(batch.errors))
        if failed and len(failed) == len(utts):
            writer.discard()
            raise InputError(f"no utterance could be read (first: {utts[failed[0][0]].path}: {failed[0][1]})")
        # Rows that could not be decoded stay out of the store.
        path = writer.finish({"failed": len(failed)} if failed else None, drop=[r for r, _ in failed])
    finally:
        writer.close()
    problems = [(utts[r].path, err) for r, err in failed]
    return ExtractResult(path, written, writer.resumed, problems, audio, time.monotonic() - t0)


class Prefetch:
    """The batches of ``dataset`` (index lists ``batches``), in order, decoded and collated by one
    thread ahead of the caller: the next ``depth`` batches are read (and pinned) while a GPU computes
    (libsndfile decodes with the GIL released). Not on the CPU, where the thread takes cores from the
    encoder's threads. An error in the thread is raised in the caller, and leaving the loop early
    (an exception, Ctrl-C, ``break``) stops the thread."""

    def __init__(self, dataset: UtteranceDataset, batches: list[list[int]], depth: int = 2, pin: bool = False) -> None:
        self.dataset, self.batches, self.pin, self.depth = dataset, batches, pin, depth

    def __iter__(self) -> Iterator[Batch]:
        # (state per iteration, so that a second loop starts afresh)
        q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item: tuple[str, object]) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def run() -> None:
            try:
                for idx in self.batches:
                    if stop.is_set():
                        return
                    batch = collate([self.dataset[i] for i in idx])
                    if not put(("batch", batch.pin_memory() if self.pin else batch)):
                        return
            except BaseException as err:  # (handed to the consumer, which raises it)
                put(("error", err))
                return
            put(("end", None))

        thread = threading.Thread(target=run, name="spkemb-decode", daemon=True)
        thread.start()
        try:
            while True:
                kind, item = q.get()
                if kind == "end":
                    return
                if kind == "error":
                    assert isinstance(item, BaseException)
                    raise item
                assert isinstance(item, Batch)
                yield item
        finally:
            stop.set()
            thread.join()

    def __len__(self) -> int:
        return len(self.batches)


def read_between_forwards(dataset: UtteranceDataset, batches: list[list[int]]) -> Iterator[Batch]:
    """The batches in order, each decoded in the caller's thread when the caller asks for it, that is
    while the encoder is idle: the CPU's loader.

    Decoding ahead in a thread while the encoder computes (:class:`Prefetch`) slowed the forward by a
    third on 2 cores (89 against 126 audio-s/s fp32, benchmarks/bench_extract.py) though decoding is
    about 4 % of the work: the thread takes a core from the encoder's threads, which then wait for
    each other. Decoding a batch's files on two threads between forwards was slower still than one
    (libsndfile's FLAC decoding shares the GIL with the Python around it)."""
    for idx in batches:
        yield collate([dataset[i] for i in idx])


def default_chunk(model: torch.nn.Module, opts: ExtractOptions) -> ExtractOptions:
    """``opts`` with ``chunk`` set to the encoder's ``max_seconds`` when it has one and no ``--chunk`` was
    given: an encoder whose cost grows with the square of the length (WavLM's attention) embeds long
    utterances in windows of that length (the last one ends at the utterance's end) and averages them."""
    limit = getattr(model, "max_seconds", None)
    if opts.chunk is not None or not limit:
        return opts
    return dataclasses.replace(opts, chunk=float(limit))


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
