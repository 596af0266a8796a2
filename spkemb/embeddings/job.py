"""The extract job: what ``spkemb extract`` does, as one call from Python.

``run_extract(ExtractJob(model, manifest, output), ExtractOptions(...))`` checks every input and
output, takes the output's lock, and then either finds the store at ``output`` already complete for
this encoder, utterances and options (and returns at once), merges shard stores (``merge``), or
embeds the manifest (or its shard ``shard``) into it; under ``torchrun`` each rank embeds its part
and rank 0 merges them (:mod:`spkemb.embeddings.ranks`). It returns the summary that ``--json``
prints. Everything up to the embedding is torch-free, so bad usage and a store with nothing to do
return in a fraction of a second.

``on_progress(done, total, info)`` follows the embedding (utterances done of ``total``; ``info`` the
hours of audio). ``on_notice(kind, text)`` reports along the way: ``"skipped"`` an utterance left
out (its file and problem), ``"info"`` a line worth showing (the world size under torchrun),
``"ready"`` (empty text) once every check has passed and the work starts.
"""

from __future__ import annotations

from typing import Any

from spkemb.embeddings.plan import ExtractOptions, check_outputs, parse_shard, shard_rows
from spkemb.embeddings.ranks import launched_world, run_ranks
from spkemb.embeddings.steps import (
    ExtractJob,
    NoticeFn,
    ProgressFn,
    check_shard_sources,
    export_store,
    extract_part,
    merge_shards,
)
from spkemb.errors import InputError

__all__ = ["ExtractJob", "run_extract", "extract_part", "check_shard_sources", "ProgressFn", "NoticeFn"]


def run_extract(
    job: ExtractJob,
    options: ExtractOptions | None = None,
    on_progress: ProgressFn | None = None,
    on_notice: NoticeFn | None = None,
) -> dict[str, Any]:
    """Run ``job`` with ``options``; return the summary (see the module's docstring)."""
    from spkemb.data.manifest import read_manifest
    from spkemb.utils.encoder_files import encoder_checksum
    from spkemb.utils.locking import output_lock

    options = options or ExtractOptions()
    check_outputs(job.output, job.model, job.manifest, job.merge, job.export)  # before anything is read
    utts = read_manifest(job.manifest)
    if not utts:
        raise InputError("manifest has no utterances", job.manifest)
    check_outputs(job.output, job.model, job.manifest, job.merge, job.export, utts)  # and not onto the audio either
    if launched_world() > 1:
        if job.merge:
            raise InputError("`merge` under torchrun: a merge is one process's work; run it without torchrun")
        summary = run_ranks(job, options, utts, on_progress, on_notice)
    else:
        with output_lock(job.output, "embedding store"):
            sha = encoder_checksum(job.model)
            if job.merge:
                summary = merge_shards(job, utts, sha)
            else:
                part = [utts[i] for i in shard_rows(len(utts), parse_shard(job.shard))]
                summary = extract_part(job, options, part, sha, on_progress=on_progress, on_notice=on_notice)
            export_store(job, summary)
    return summary
