"""`spkemb extract`: embed a manifest's utterances into an HDF5 store."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from spkemb.cli.common import console, guarded, print_json, progress


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class ExportFormat(StrEnum):
    npy = "npy"
    kaldi = "kaldi"


@guarded
def extract(
    model: str = typer.Argument(..., help="Encoder file (encoder.pt), experiment folder, or built-in baseline "
                                "name (mfcc-stats)."),
    manifest: str = typer.Argument(..., help="Manifest TSV ('-' for stdin)."),
    output: Path = typer.Option(..., "-o", "--output", help="HDF5 store to write (emb.h5)."),
    batch_seconds: float = typer.Option(120.0, help="Padded audio seconds per batch (length-bucketed)."),
    max_batch: int = typer.Option(64, help="At most this many utterances per batch."),
    workers: int | None = typer.Option(None, help="DataLoader worker processes decoding audio (0 = in the main "
                                       "process). [default: 0 on the CPU, where a worker steals the model's "
                                       "cores; 4 on CUDA]"),
    chunk: float | None = typer.Option(None, help="Embed long utterances in windows of this many seconds and "
                                       "average them."),
    hop: float | None = typer.Option(None, help="Hop between windows in seconds (default: --chunk)."),
    vad: bool = typer.Option(False, "--vad", help="Drop low-energy frames before embedding."),
    precision: Precision = typer.Option(Precision.fp32, help="bf16 autocast is fast on CPUs with AMX/AVX512-BF16 "
                                        "and on GPUs; fp16 is for CUDA."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    threads: int | None = typer.Option(None, help="Torch threads for the model (default: torch's choice)."),
    shard: str | None = typer.Option(None, help="Embed only shard I/N (0-based) of the manifest; merge the "
                                     "shards' stores later with --merge."),
    merge: list[Path] | None = typer.Option(None, help="Merge these shard stores (repeat the option) into -o, "
                                            "in manifest order, instead of extracting."),
    export: ExportFormat | None = typer.Option(None, help="Also write the store as .npy (+ .ids.txt) or "
                                               "Kaldi text .ark/.scp beside -o."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Embed every utterance of MANIFEST with MODEL into an HDF5 store.

    Resumable: an interrupted run (or one stopped by a full disk) leaves OUTPUT.partial (HASH.partial
    beside it for a name too long to take the suffix), and the same command finishes it. A store at
    OUTPUT is always complete, every row finite; a failed run leaves an existing OUTPUT untouched.
    Audio that cannot be read, or that holds NaN or infinite samples, is skipped and reported. One
    run at a time writes OUTPUT: a second is refused (exit 2), naming the first one's pid.
    """
    from spkemb.data.manifest import read_manifest
    from spkemb.embeddings.export import export_embeddings
    from spkemb.embeddings.extract import (
        ExtractOptions,
        check_outputs,
        extract_embeddings,
        parse_shard,
        shard_rows,
    )
    from spkemb.embeddings.store import merge_stores, read_embeddings
    from spkemb.errors import InputError
    from spkemb.locking import output_lock
    from spkemb.models.io import describe_encoder, encoder_checksum, load_encoder
    from spkemb.runtime import set_threads

    fmt = export.value if export else None
    check_outputs(output, model, manifest, merge or (), fmt)  # before anything is read
    utts = read_manifest(manifest)
    if not utts:
        raise InputError("manifest has no utterances", manifest)
    check_outputs(output, model, manifest, merge or (), fmt, utts)  # and not onto the audio either
    with output_lock(output, "embedding store"):
        sha = encoder_checksum(model)
        if merge:
            out = merge_stores(merge, output, order=[u.utt_id for u in utts], expect_sha256=sha)
            emb = read_embeddings(out)
            console.print(f"merged {len(merge)} shards into {out} ({len(emb)} embeddings)")
            summary: dict = {"output": str(out), "embeddings": len(emb), "merged": [str(m) for m in merge]}
        else:
            set_threads(threads)
            encoder = load_encoder(model)
            info = describe_encoder(encoder)
            part = [utts[i] for i in shard_rows(len(utts), parse_shard(shard))]
            opts = ExtractOptions(batch_seconds, max_batch, workers, chunk, hop, vad, precision.value, device)
            attrs = {"encoder": info["name"], "encoder_config": info["config"], "checkpoint_sha256": sha,
                     "model": str(model), "manifest": str(manifest), "shard": shard or "0/1"}
            total = sum(u.duration for u in part)
            with progress() as bar:
                task = bar.add_task("extract", total=len(part), info="")
                seen = {"audio": 0.0}

                def on_progress(secs: float, n: int) -> None:
                    seen["audio"] += secs
                    bar.update(task, advance=n, info=f"{seen['audio'] / 3600:.2f}/{total / 3600:.2f} h")

                res = extract_embeddings(encoder, part, output, attrs, opts, on_progress)
            out = res.path
            summary = _report(res)
            summary["encoder"] = info["name"]
        if fmt:
            written = export_embeddings(read_embeddings(out), out, fmt)
            summary["exported"] = [str(p) for p in written]
            console.print("exported " + ", ".join(str(p) for p in written))
    if json_out:
        print_json(summary)


def _report(res: Any) -> dict[str, Any]:
    """Print what an extraction did (files skipped, rows written, speed); return the --json summary."""
    for path, problem in res.failed[:5]:
        console.print(f"[yellow]skipped[/] {escape(path)}: {escape(problem)}", highlight=False, soft_wrap=True)
    if len(res.failed) > 5:
        console.print(f"[yellow]skipped {len(res.failed) - 5} more bad audio files[/]")
    if res.failed:
        console.print(f"[yellow]{len(res.failed)} of the utterances were left out (unreadable or bad audio)[/]")
    speed = res.audio_seconds / res.wall_seconds if res.wall_seconds else 0.0
    console.print(f"wrote {res.written} embeddings to {res.path}"
                  + (f" ({res.resumed} from an earlier run)" if res.resumed else "")
                  + f"; {res.audio_seconds:.0f} audio-s in {res.wall_seconds:.1f} s ({speed:.0f}x real time)",
                  highlight=False, soft_wrap=True)
    return {"output": str(res.path), "embeddings": res.written, "resumed": res.resumed,
            "failed": len(res.failed), "audio_seconds": round(res.audio_seconds, 3),
            "wall_seconds": round(res.wall_seconds, 3), "realtime_factor": round(speed, 2)}
