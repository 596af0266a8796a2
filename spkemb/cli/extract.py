"""`spkemb extract`: embed a manifest's utterances into an HDF5 store.

Everything before the embedding (checks, the encoder's checksum, whether -o is already complete)
is torch-free (:mod:`spkemb.embeddings.plan`), so bad usage and a run with nothing to do return at once.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from spkemb.cli.common import Precision, busy_notice, complete_device, console, guarded, print_json, progress
from spkemb.errors import InputError


class ExportFormat(StrEnum):
    npy = "npy"
    kaldi = "kaldi"


@guarded
def extract(
    model: str = typer.Argument(
        ...,
        metavar="MODEL",
        help="Encoder file (encoder.pt), experiment folder, or built-in baseline name (mfcc-stats).",
    ),
    manifest: str = typer.Argument(..., metavar="MANIFEST", help="Manifest TSV ('-' for stdin)."),
    output: Path = typer.Option(..., "-o", "--output", metavar="EMB.h5", help="HDF5 store to write."),
    batch_seconds: float = typer.Option(120.0, metavar="S", help="Padded audio seconds per batch (length-bucketed)."),
    max_batch: int = typer.Option(64, metavar="N", help="At most this many utterances per batch."),
    workers: int | None = typer.Option(
        None,
        metavar="N",
        help="Worker processes decoding audio (0 = in the main "
        "process). [default: 0 on the CPU, where a worker steals the model's "
        "cores; 4 on CUDA]",
    ),
    chunk: float | None = typer.Option(
        None, metavar="S", help="Embed long utterances in windows of S seconds and average them."
    ),
    hop: float | None = typer.Option(None, metavar="S", help="Hop between windows in seconds. [default: --chunk]"),
    vad: bool = typer.Option(False, "--vad", help="Drop low-energy frames before embedding."),
    precision: Precision = typer.Option(
        Precision("fp32"),
        case_sensitive=False,
        help="bf16 autocast is fast on CPUs with AMX/AVX512-BF16 and on GPUs; fp16 is for CUDA.",
    ),
    device: str = typer.Option(
        "auto", metavar="[auto|cpu|cuda|cuda:N]", autocompletion=complete_device, help="Device."
    ),
    threads: int | None = typer.Option(
        None,
        metavar="N",
        help="Compute threads for the model. [default: one per "
        "core; OMP_NUM_THREADS also sets it] Jobs sharing a machine should "
        "together use at most its cores.",
    ),
    shard: str | None = typer.Option(
        None,
        metavar="I/N",
        help="Embed only shard I of N (0-based) of the manifest; merge the shards' stores later with --merge.",
    ),
    merge: list[Path] | None = typer.Option(
        None,
        metavar="SHARD.h5",
        help="Merge these shard stores (repeat the option) into -o, in manifest order, instead of extracting.",
    ),
    export: ExportFormat | None = typer.Option(
        None, help="Also write the store as .npy (+ .ids.txt) or Kaldi text .ark/.scp beside -o."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Extract again even when -o is already complete for "
        "this encoder, manifest and options; replace a complete -o made otherwise.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Embed every utterance of MANIFEST with MODEL into an HDF5 store.

    Resumable: an interrupted run (or one stopped by a full disk) leaves OUTPUT.partial (HASH.partial
    beside it for a name too long to take the suffix), and the same command finishes it. A store at
    OUTPUT is always complete, every row finite; a failed run leaves an existing OUTPUT untouched.
    When OUTPUT is already complete for the same encoder, utterances and options, the command says
    so and returns at once (--overwrite extracts again; --export still exports); a complete OUTPUT
    made with another encoder, utterances or options is refused (exit 2) unless --overwrite, so that
    hours of embedding are never replaced by a slip of -o. Audio that cannot
    be read, or that holds NaN or infinite samples, is skipped and reported. One run at a time
    writes OUTPUT: a second is refused (exit 2), naming the first one's pid. On a machine that other
    jobs keep busy a notice suggests fewer threads (--threads N or OMP_NUM_THREADS=N): jobs that
    share cores run many times slower together.
    """
    from spkemb.data.manifest import read_manifest
    from spkemb.embeddings.plan import check_outputs
    from spkemb.encoder_files import encoder_checksum
    from spkemb.locking import output_lock

    fmt = export.value if export else None
    check_outputs(output, model, manifest, merge or (), fmt)  # before anything is read
    utts = read_manifest(manifest)
    if not utts:
        raise InputError("manifest has no utterances", manifest)
    check_outputs(output, model, manifest, merge or (), fmt, utts)  # and not onto the audio either
    with output_lock(output, "embedding store"):
        sha = encoder_checksum(model)
        if merge:
            summary = _merge(merge, output, utts, sha, overwrite)
        else:
            from spkemb.embeddings.plan import ExtractOptions

            opts = ExtractOptions(batch_seconds, max_batch, workers, chunk, hop, vad, precision.value, device)
            summary = _extract(model, manifest, utts, output, opts, sha, shard, threads, overwrite)
        if fmt:
            from spkemb.embeddings.export import export_embeddings
            from spkemb.embeddings.store import read_embeddings

            written = export_embeddings(read_embeddings(summary["output"]), summary["output"], fmt)
            summary["exported"] = [str(p) for p in written]
            console.print("exported " + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True)
    if json_out:
        print_json(summary)


def _merge(merge: list[Path], output: Path, utts: list[Any], sha: str, overwrite: bool) -> dict[str, Any]:
    from spkemb.embeddings.plan import ExtractOptions, existing_store, refuse_replacing, utterances_digest
    from spkemb.embeddings.store import merge_stores, read_embeddings

    existing = None if overwrite else existing_store(output, sha, utts, ExtractOptions())
    if existing is not None:  # (the shards' options are the merge's: only encoder and utterances compare)
        refuse_replacing(output, existing[0]["embeddings"], [d for d in existing[1] if d != "options"])

    # The merged store records the whole manifest's digest, as one extraction of it would: a later
    # `extract` (e.g. --export) onto it then finds it complete instead of embedding again.
    out = merge_stores(
        merge, output, order=[u.utt_id for u in utts], expect_sha256=sha, manifest_sha256=utterances_digest(utts)
    )
    n = len(read_embeddings(out))
    console.print(f"merged {len(merge)} shards into {out} ({n} embeddings)", highlight=False, soft_wrap=True)
    return {"output": str(out), "embeddings": n, "merged": [str(m) for m in merge]}


def _extract(
    model: str,
    manifest: str,
    utts: list[Any],
    output: Path,
    opts: Any,
    sha: str,
    shard: str | None,
    threads: int | None,
    overwrite: bool,
) -> dict[str, Any]:
    """Embed shard ``shard`` of ``utts`` into ``output``, unless it is already complete (and not ``overwrite``)."""
    from spkemb.embeddings.plan import existing_store, parse_shard, refuse_replacing, shard_rows

    part = [utts[i] for i in shard_rows(len(utts), parse_shard(shard))]
    existing = None if overwrite else existing_store(output, sha, part, opts)
    if existing is not None:
        refuse_replacing(output, existing[0]["embeddings"], existing[1])
        done = existing[0]
        left_out = f", {done['failed']} unreadable utterances left out" if done["failed"] else ""
        console.print(
            f"{output} is already complete for this encoder, manifest and options ({done['embeddings']} "
            f"embeddings{left_out}); nothing to do (--overwrite extracts again)",
            highlight=False,
            soft_wrap=True,
        )
        return {
            "output": str(output),
            "embeddings": done["embeddings"],
            "resumed": 0,
            "failed": done["failed"],
            "up_to_date": True,
        }
    from spkemb.embeddings.extract import extract_embeddings
    from spkemb.models.io import describe_encoder, load_encoder
    from spkemb.runtime import check_precision, resolve_device, set_threads

    set_threads(threads)
    encoder = load_encoder(model)
    check_precision(opts.precision, resolve_device(opts.device))
    busy_notice(threads)  # (after the checks: bad input is one line)
    info = describe_encoder(encoder)
    attrs = {
        "encoder": info["name"],
        "encoder_config": info["config"],
        "checkpoint_sha256": sha,
        "model": str(model),
        "manifest": str(manifest),
        "shard": shard or "0/1",
    }
    total = sum(u.duration for u in part)
    with progress() as bar:
        task = bar.add_task("extract", total=len(part), info="")
        seen = {"audio": 0.0}

        def on_progress(secs: float, n: int) -> None:
            seen["audio"] += secs
            bar.update(task, advance=n, info=f"{seen['audio'] / 3600:.2f}/{total / 3600:.2f} h")

        res = extract_embeddings(encoder, part, output, attrs, opts, on_progress)
    summary = _report(res)
    summary.update(encoder=info["name"], up_to_date=False)
    return summary


def _report(res: Any) -> dict[str, Any]:
    """Print what an extraction did (files skipped, rows written, speed); return the --json summary."""
    for path, problem in res.failed[:5]:
        console.print(f"[yellow]skipped[/] {escape(path)}: {escape(problem)}", highlight=False, soft_wrap=True)
    if len(res.failed) > 5:
        console.print(f"[yellow]skipped {len(res.failed) - 5} more bad audio files[/]")
    if res.failed:
        console.print(f"[yellow]{len(res.failed)} of the utterances were left out (unreadable or bad audio)[/]")
    speed = res.audio_seconds / res.wall_seconds if res.wall_seconds else 0.0
    console.print(
        f"wrote {res.written} embeddings to {res.path}"
        + (f" ({res.resumed} from an earlier run)" if res.resumed else "")
        + f"; {res.audio_seconds:.0f} audio-s in {res.wall_seconds:.1f} s ({speed:.0f}x real time)",
        highlight=False,
        soft_wrap=True,
    )
    return {
        "output": str(res.path),
        "embeddings": res.written,
        "resumed": res.resumed,
        "failed": len(res.failed),
        "audio_seconds": round(res.audio_seconds, 3),
        "wall_seconds": round(res.wall_seconds, 3),
        "realtime_factor": round(speed, 2),
    }
