"""What an extraction will do, decided before torch is imported.

``spkemb extract`` checks its inputs and outputs and whether the store at ``-o`` is already
complete for the same encoder, utterances and options here, so that bad usage and an extraction
with nothing to do return in a fraction of a second, not after the seconds torch takes to load.
The encoder file rules (``encoder_path``, ``encoder_checksum``) come from :mod:`spkemb.utils.encoder_files`,
which :mod:`spkemb.models.io` uses too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spkemb.errors import InputError
from spkemb.options import Options, opt
from spkemb.utils.encoder_files import encoder_path

if TYPE_CHECKING:
    from spkemb.data.manifest import Utterance


@dataclass
class ExtractOptions(Options):
    """How ``extract`` embeds: what changes the embeddings (:meth:`identity`) and what changes only its speed."""

    batch_seconds: float = opt(120.0, "padded audio seconds per batch (length-bucketed)")
    max_batch: int = opt(64, "at most this many utterances per batch")
    workers: int | None = opt(
        None,
        "worker processes decoding audio (0 = in the main process); none: 0 on the CPU, where a worker "
        "steals the model's cores, 4 on CUDA",
    )
    chunk: float | None = opt(None, "embed long utterances in windows of this many seconds and average them")
    hop: float | None = opt(None, "hop between windows in seconds; none: the chunk length")
    vad: bool = opt(False, "drop low-energy frames before embedding")
    precision: str = opt(
        "fp32",
        "numeric precision: bf16 autocast is fast on CPUs with AMX/AVX512-BF16 and on GPUs; fp16 is for CUDA; "
        "int8 (CPU only) runs the encoder's matrix products in dynamic int8 through onnxruntime",
    )
    device: str = opt(
        "auto", "device (auto, cpu, cuda, cuda:N); under torchrun on CUDA each rank takes cuda:LOCAL_RANK"
    )

    def __post_init__(self) -> None:
        if self.chunk is not None and self.chunk <= 0:
            raise ValueError(f"chunk {self.chunk}: must be a positive number of seconds")
        if self.hop is not None and (self.hop <= 0 or self.chunk is None):
            raise ValueError(f"hop {self.hop}: needs a chunk length too, and must be positive")
        if self.batch_seconds <= 0:
            raise ValueError(f"batch_seconds {self.batch_seconds}: must be positive")
        if self.max_batch < 1:
            raise ValueError(f"max_batch {self.max_batch}: must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers {self.workers}: must be 0 or more")

    def identity(self) -> dict:
        """What changes the embeddings (and so must match to resume)."""
        return {"chunk": self.chunk, "hop": self.hop, "vad": self.vad, "precision": self.precision}


#: what one more batch costs, in padded audio-seconds of encoder work (the per-batch set-up: layer
#: launches, small GEMM tails); :func:`padded_batches` weighs padding against it
BATCH_OVERHEAD_SECONDS = 2.0


def padded_batches(
    durations: Sequence[float],
    max_seconds: float = 120.0,
    max_items: int = 64,
    overhead: float = BATCH_OVERHEAD_SECONDS,
) -> list[list[int]]:
    """Indices grouped into batches of similar duration, longest first, each holding at most
    ``max_seconds`` of padded audio (longest x count; a longer item goes alone) and ``max_items``
    items, cut where padding plus ``overhead`` per batch is least (an exact dynamic programme over the
    sorted durations). The greedy fill of :func:`~spkemb.data.utterances.bucket_batches` padded
    test-other's 100 utterances by 14.5 % at 120 s per batch; this cuts where lengths drop."""
    import numpy as np  # (numpy only: this module stays torch-free)

    d = np.asarray(durations, dtype=float)
    order = np.argsort(-d, kind="stable")
    s = d[order]
    n = len(s)
    best = np.zeros(n + 1)
    cut = np.zeros(n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        k = np.arange(1, min(max_items, n - i) + 1)
        k = k[(k * s[i] <= max_seconds) | (k == 1)]
        cost = k * s[i] + overhead + best[i + k]
        j = int(np.argmin(cost))
        best[i], cut[i] = cost[j], i + k[j]
    batches: list[list[int]] = []
    i = 0
    while i < n:
        batches.append([int(x) for x in order[i : cut[i]]])
        i = int(cut[i])
    return batches


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``I/N`` (0-based I) -> (I, N); a bad spec raises :class:`ValueError` naming the ``shard`` option."""
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"shard {spec!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {spec!r}: need 0 <= I < N")
    return i, n


def shard_rows(n: int, shard: tuple[int, int]) -> list[int]:
    """Contiguous slice ``I`` of ``N`` of the rows 0..n-1."""
    i, k = shard
    return list(range(n * i // k, n * (i + 1) // k))


def utterances_digest(utts: Sequence[Utterance]) -> str:
    """SHA-256 of what an extraction reads from each utterance (id, audio, segment, speaker), in
    order: recorded in a store as ``manifest_sha256``, so a rerun can tell it has nothing to do."""
    h = hashlib.sha256()
    for u in utts:
        h.update(f"{u.utt_id}\t{u.path}\t{u.start}\t{u.end}\t{u.speaker}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def check_outputs(
    output: str | Path,
    model: str | Path,
    manifest: str | Path,
    merge: Sequence[str | Path] = (),
    export: str | None = None,
    utts: Sequence[Utterance] = (),
) -> None:
    """Refuse (:class:`InputError`) an ``output`` store, or its ``export`` files, that would replace one
    of the inputs (the encoder file, the manifest, a ``merge`` shard, or any audio file of ``utts``),
    and an ``output`` that is an existing folder. Call it before any work."""
    from spkemb.embeddings.export import export_paths
    from spkemb.utils.fileio import refuse_output_onto_inputs

    inputs: dict[str, str | Path | None] = {"manifest": manifest}
    if Path(model).exists():
        inputs["model"] = encoder_path(model)
    inputs.update({f"`merge` {m}": m for m in merge})
    outputs = [Path(output), *(export_paths(output, export) if export else [])]
    audio = {os.path.normpath(os.path.abspath(u.path)) for u in utts}
    for out in outputs:
        refuse_output_onto_inputs(out, inputs)
        if os.path.normpath(os.path.abspath(out)) in audio or os.path.realpath(out) in audio:
            raise InputError("the output is one of the manifest's audio files; choose another -o", out)


DIFFERENCES = {
    "encoder": "another encoder",
    "utterances": "other utterances (manifest or `shard`)",
    "options": "other extraction options",
}


def refuse_replacing(output: str | Path, rows: int, differences: Sequence[str]) -> None:
    """Refuse (:class:`InputError`) to replace the complete store of ``rows`` embeddings at ``output``
    that was made otherwise (``differences``, keys of :data:`DIFFERENCES`; nothing when empty)."""
    if differences:
        made = " and ".join(DIFFERENCES[d] for d in differences)
        raise InputError(
            f"holds a complete store of {rows} embeddings made with {made}; `overwrite` replaces it "
            "(or choose another -o)",
            output,
        )


def existing_store(
    output: str | Path, checksum: str, utts: Sequence[Utterance], opts: ExtractOptions
) -> tuple[dict[str, Any], list[str]] | None:
    """The complete store at ``output`` (``None`` when there is none: no file, or an unfinished or
    foreign one), as ``({"embeddings": rows, "failed": utterances left out}, differences)``:
    ``differences`` names what this extraction would do otherwise than the one that made it (keys of
    :data:`DIFFERENCES`: the encoder by :func:`~spkemb.utils.encoder_files.encoder_checksum`, the utterances
    by :func:`utterances_digest`, the options); empty when it is already this extraction's result."""
    from spkemb.embeddings.store import store_info

    info = store_info(output)
    if info is None:
        return None
    have, rows = info
    options = have.get("options")
    try:
        options = json.loads(options) if isinstance(options, str) else options
    except json.JSONDecodeError:
        options = None
    differences = [key for key, same in (
        ("encoder", have.get("checkpoint_sha256") == checksum),
        ("utterances", have.get("manifest_sha256") == utterances_digest(utts)),
        ("options", options == opts.identity()),
    ) if not same]  # fmt: skip
    return {"embeddings": rows, "failed": int(have.get("failed", 0))}, differences
