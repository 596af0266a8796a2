"""The steps of the extract job (:mod:`spkemb.embeddings.job`): what to embed (:class:`ExtractJob`),
one process's part, a merge of shard stores, the export; shared by one process and by the ranks of
``torchrun`` (:mod:`spkemb.embeddings.ranks`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spkemb.embeddings.plan import (
    ExtractOptions,
    existing_store,
    parse_shard,
    refuse_replacing,
    shard_rows,
    utterances_digest,
)
from spkemb.errors import InputError
from spkemb.options import Options, opt

if TYPE_CHECKING:
    from spkemb.data.manifest import Utterance

__all__ = [
    "ExtractJob",
    "extract_part",
    "merge_shards",
    "export_store",
    "check_shard_sources",
    "ProgressFn",
    "NoticeFn",
]

ProgressFn = Callable[[int, int, str], None]
NoticeFn = Callable[[str, str], None]
EXPORT_FORMATS = ("npy", "kaldi")


@dataclass
class ExtractJob(Options):
    """What to embed and where; :class:`ExtractOptions` says how."""

    model: str = opt(
        "", "encoder file (encoder.pt), experiment folder, built-in baseline name (mfcc-stats), or MODEL.onnx"
    )
    manifest: str = opt("", "manifest TSV ('-' for stdin)")
    output: str = opt("", "HDF5 store to write")
    shard: str | None = opt(None, "embed only shard I/N (0-based) of the manifest")
    merge: list[str] = opt([], "merge these shard stores into the output, in manifest order, instead of extracting")
    export: str | None = opt(
        None, "also write the store as npy (+ .ids.txt) or Kaldi binary .ark/.scp (kaldiio) beside it"
    )
    overwrite: bool = opt(
        False,
        "extract again even when the output is already complete for this encoder, manifest and options; "
        "replace a complete output made otherwise",
    )
    threads: int | None = opt(
        None,
        "compute threads for the model (jobs sharing a machine should together use at most its cores); "
        "none: one per core, or OMP_NUM_THREADS",
    )

    def __post_init__(self) -> None:
        self.model, self.manifest, self.output = str(self.model), str(self.manifest), str(self.output)
        self.merge = [str(m) for m in self.merge]
        if not self.model:
            raise ValueError("model: name an encoder file, experiment folder or built-in baseline")
        if not self.output:
            raise ValueError("output: name the store to write")
        if self.output == "-":
            raise ValueError(
                "output '-': an embedding store cannot go to stdout (HDF5 needs a file it can seek in); name a file"
            )
        if self.export is not None and self.export not in EXPORT_FORMATS:
            raise ValueError(f"export {self.export!r}: expected one of {', '.join(EXPORT_FORMATS)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads {self.threads}: must be at least 1")
        if self.shard is not None:
            parse_shard(self.shard)
            if self.merge:
                raise ValueError("shard: a merge reads whole shard stores; give either shard or merge")


def export_store(job: ExtractJob, summary: dict[str, Any]) -> None:
    """``--export``: write the store of ``summary`` as ``job.export`` files beside it, listed in the summary."""
    if job.export:
        from spkemb.embeddings.export import export_embeddings
        from spkemb.embeddings.store import read_embeddings

        written = export_embeddings(read_embeddings(summary["output"]), summary["output"], job.export)
        summary["exported"] = [str(p) for p in written]


def check_model(model: str) -> None:
    """Refuse (:class:`InputError`) a model that names no file, folder or built-in encoder (torch-free)."""
    from spkemb.utils.discover import encoder_names
    from spkemb.utils.encoder_files import encoder_path

    if encoder_path(model) is None and str(model).strip().lower().replace("_", "-") not in encoder_names():
        raise InputError("no such encoder file or folder, and not a built-in encoder", model)


def merge_shards(job: ExtractJob, utts: Sequence[Utterance], sha: str) -> dict[str, Any]:
    """``extract --merge``: the shard stores of ``job.merge`` into ``job.output``, in manifest order."""
    from spkemb.embeddings.store import merge_stores, read_embeddings

    existing = None if job.overwrite else existing_store(job.output, sha, utts, ExtractOptions())
    if existing is not None:  # (the shards' options are the merge's: only encoder and utterances compare)
        if "encoder" in existing[1]:
            check_model(job.model)  # a mistyped model is named before the store made otherwise
        refuse_replacing(job.output, existing[0]["embeddings"], [d for d in existing[1] if d != "options"])
    check_shard_sources(job.merge, utts, job.manifest)
    # The merged store records the whole manifest's digest, as one extraction of it would: a later
    # `extract` (e.g. --export) onto it then finds it complete instead of embedding again.
    out = merge_stores(
        job.merge,
        job.output,
        order=[u.utt_id for u in utts],
        expect_sha256=sha,
        manifest_sha256=utterances_digest(utts),
    )
    return {"output": str(out), "embeddings": len(read_embeddings(out)), "merged": list(job.merge)}


def up_to_date(
    job: ExtractJob, output: str | Path, part: Sequence[Utterance], options: ExtractOptions, sha: str
) -> dict | None:
    """The summary of a store at ``output`` that is already this extraction's result (``None`` when
    there is none, or ``job.overwrite``); a complete store made otherwise is refused."""
    existing = None if job.overwrite else existing_store(output, sha, part, options)
    if existing is None:
        return None
    if "encoder" in existing[1]:
        check_model(job.model)  # a mistyped model is named before the store made otherwise
    refuse_replacing(output, existing[0]["embeddings"], existing[1])
    done = existing[0]
    return {
        "output": str(output),
        "embeddings": done["embeddings"],
        "resumed": 0,
        "failed": done["failed"],
        "up_to_date": True,
    }


def extract_part(
    job: ExtractJob,
    options: ExtractOptions,
    part: Sequence[Utterance],
    sha: str,
    output: str | Path | None = None,
    on_progress: ProgressFn | None = None,
    on_notice: NoticeFn | None = None,
    shard: str | None = None,
) -> dict[str, Any]:
    """Embed ``part`` into ``output`` (default ``job.output``), unless it is already complete there."""
    output = output or job.output
    done = up_to_date(job, output, part, options, sha)
    if done is not None:
        return done
    from spkemb.embeddings.extract import extract_embeddings
    from spkemb.embeddings.onnx_runner import is_onnx_model, load_onnx_encoder
    from spkemb.models.io import describe_encoder, load_encoder
    from spkemb.utils.choices import EXTRACT_PRECISIONS
    from spkemb.utils.runtime import check_precision, emulated_bf16, resolve_device, set_threads

    set_threads(job.threads)
    if is_onnx_model(job.model):  # an exported graph (spkemb export-model): run through onnxruntime
        encoder: Any = load_onnx_encoder(job.model, options.precision, job.threads)
    else:
        encoder = load_encoder(job.model)
    device = resolve_device(options.device)
    check_precision(options.precision, device, EXTRACT_PRECISIONS)
    if on_notice:
        on_notice("ready", "")  # (after the checks: bad input is one line)
        note = emulated_bf16(options.precision, device)
        if note:
            on_notice("info", f"notice: {note}")
    info = describe_encoder(encoder)
    attrs = {
        "encoder": info["name"],
        "encoder_config": info["config"],
        "checkpoint_sha256": sha,
        "model": job.model,
        "manifest": job.manifest,
        "shard": shard or job.shard or "0/1",
    }
    total, hours = len(part), sum(u.duration for u in part) / 3600
    seen = {"audio": 0.0, "n": 0.0}

    def step(secs: float, n: int) -> None:
        seen["audio"] += secs
        seen["n"] += n
        if on_progress:
            on_progress(int(seen["n"]), total, f"{seen['audio'] / 3600:.2f}/{hours:.2f} h")

    res = extract_embeddings(encoder, part, output, attrs, options, step)
    for path, problem in res.failed:
        if on_notice:
            on_notice("skipped", f"{path}: {problem}")
    speed = res.audio_seconds / res.wall_seconds if res.wall_seconds else 0.0
    return {
        "output": str(res.path),
        "embeddings": res.written,
        "resumed": res.resumed,
        "failed": len(res.failed),
        "audio_seconds": round(res.audio_seconds, 3),
        "wall_seconds": round(res.wall_seconds, 3),
        "realtime_factor": round(speed, 2),
        "encoder": info["name"],
        "up_to_date": False,
    }


def check_shard_sources(shards: Sequence[str | Path], utts: Sequence[Utterance], manifest: str | Path) -> None:
    """Refuse (:class:`InputError`) a shard store that was extracted from another manifest than ``utts``.

    A shard records the digest of the rows it embedded (:func:`~spkemb.embeddings.plan.utterances_digest`)
    and which shard it was (``I/N``). It matches when the digest equals that of ``utts``' rows of shard
    ``I/N``, or that of the rows of ``utts`` with the shard's ids in the shard's order (a manifest split
    by hand). A shard that left unreadable files out, or records no digest, is checked by its ids only
    (by the merge)."""
    from spkemb.embeddings.store import store_info
    from spkemb.embeddings.validate import stored_ids

    by_id = {u.utt_id: u for u in utts}
    for path in shards:
        info = store_info(path)
        if info is None:
            continue  # the merge names what is wrong with it
        attrs = info[0]
        digest, spec = attrs.get("manifest_sha256"), attrs.get("shard")
        if not isinstance(digest, str) or int(attrs.get("failed", 0) or 0):
            continue
        if isinstance(spec, str):
            try:
                rows = shard_rows(len(utts), parse_shard(spec))
            except ValueError:
                rows = []
            if utterances_digest([utts[i] for i in rows]) == digest:
                continue
        ids = stored_ids(path)
        if any(u not in by_id for u in ids):
            continue  # the merge names the ids that are not in the manifest
        if utterances_digest([by_id[u] for u in ids]) != digest:
            raise InputError(
                f"this shard was extracted from another manifest than {manifest} (the audio, segments or "
                "speakers of its utterances differ); extract it again from this manifest",
                path,
            )
