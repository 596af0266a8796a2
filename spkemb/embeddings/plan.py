"""What an extraction will do, decided before torch is imported.

``spkemb extract`` checks its inputs and outputs and whether the store at ``-o`` is already
complete for the same encoder, utterances and options here, so that bad usage and an extraction
with nothing to do return in a fraction of a second, not after the seconds torch takes to load.
The encoder file rules mirror :mod:`spkemb.models.io` (``encoder_path``, ``encoder_checksum``),
which stays the authority once torch is loaded; a test keeps the two in step.
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

if TYPE_CHECKING:
    from spkemb.data.manifest import Utterance

ENCODER_FILE = "encoder.pt"  # as spkemb.models.io.ENCODER_FILE


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


def encoder_path(spec: str | Path) -> Path | None:
    """The encoder file that ``spec`` names (an experiment folder names its ``encoder.pt``), or
    ``None`` when it names no file or folder (a built-in encoder's name)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        f = p / ENCODER_FILE
        if not f.is_file():
            raise InputError(f"no {ENCODER_FILE} in this folder (not an experiment folder?)", p)
        return f
    if p.exists():
        return p
    return None


def encoder_checksum(spec: str | Path) -> str:
    """The SHA-256 of the encoder file behind ``spec``, or ``builtin:NAME`` for a built-in baseline
    (recorded in stores; shards must agree on it)."""
    path = encoder_path(spec)
    if path is None:
        return "builtin:" + str(spec).strip().lower().replace("_", "-")
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as err:
        raise InputError(f"cannot read file ({err.strerror or type(err).__name__})", path) from None
    return h.hexdigest()


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
    from spkemb.fileio import refuse_output_onto_inputs

    inputs: dict[str, str | Path | None] = {"manifest": manifest}
    if Path(model).exists():
        inputs["model"] = encoder_path(model)
    inputs.update({f"--merge {m}": m for m in merge})
    outputs = [Path(output), *(export_paths(output, export) if export else [])]
    audio = {os.path.normpath(os.path.abspath(u.path)) for u in utts}
    for out in outputs:
        refuse_output_onto_inputs(out, inputs)
        if os.path.normpath(os.path.abspath(out)) in audio or os.path.realpath(out) in audio:
            raise InputError("the output is one of the manifest's audio files; choose another -o", out)


def finished_store(
    output: str | Path, checksum: str, utts: Sequence[Utterance], opts: ExtractOptions
) -> dict[str, Any] | None:
    """The complete store at ``output`` when it was made from the same encoder (``checksum``, see
    :func:`encoder_checksum`), the same utterances ``utts`` (by :func:`utterances_digest`) and options
    that give the same embeddings: ``{"embeddings": rows, "failed": utterances left out}``. ``None``
    when there is no such store (none, unfinished, or made otherwise), so the extraction must run."""
    from spkemb.embeddings.store import store_info

    info = store_info(output)
    if info is None:
        return None
    have, rows = info
    options = have.get("options")
    try:
        options = json.loads(options) if isinstance(options, str) else options
    except json.JSONDecodeError:
        return None
    same = (have.get("checkpoint_sha256") == checksum and options == opts.identity()
            and have.get("manifest_sha256") == utterances_digest(utts))
    return {"embeddings": rows, "failed": int(have.get("failed", 0))} if same else None
