"""`spkemb extract`: embed a manifest's utterances into an HDF5 store.

The job is :func:`spkemb.embeddings.job.run_extract`; this module parses, calls it and prints. The
options' defaults and help come from :class:`~spkemb.embeddings.job.ExtractJob` and
:class:`~spkemb.embeddings.plan.ExtractOptions`. Nothing here imports torch: bad usage and a run with
nothing to do return at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from spkemb.cli.common import busy_notice, complete_device, console, fail, guarded, print_json, progress
from spkemb.cli.errors import flag_text
from spkemb.cli.params import ExtractPrecision, command_flags
from spkemb.embeddings.job import ExtractJob
from spkemb.embeddings.plan import ExtractOptions
from spkemb.errors import InputError

J, E = ExtractJob, ExtractOptions
#: option fields whose flag is not --field-name
FLAGS = {"output": "-o", "model": "MODEL", "manifest": "MANIFEST"}


class ExportFormat(StrEnum):
    npy = "npy"
    kaldi = "kaldi"


def _help(cls: type, name: str) -> str:
    """A field's help as ``--help`` shows it: a sentence, and what ``None`` means as its default."""
    text = next(str(f.metadata["help"]) for f in dataclasses.fields(cls) if f.name == name)
    main, _, none = text.partition("; none: ")
    return main[0].upper() + main[1:] + "." + (f" [default: {none}]" if none else "")


def _build(cls: type, **values: Any) -> Any:
    """``cls(**values)``, a refused value as one line naming the command line's option."""
    try:
        return cls(**values)
    except ValueError as err:
        word, _, rest = str(err).partition(" ")
        field = word.rstrip(":")
        flag = FLAGS.get(field, "--" + field.replace("_", "-"))
        raise InputError(f"{flag}{word[len(field) :]} {rest}".strip()) from None


@guarded
def extract(
    model: str = typer.Argument(..., metavar="MODEL", help=_help(J, "model")),
    manifest: str = typer.Argument(..., metavar="MANIFEST", help=_help(J, "manifest")),
    output: Path = typer.Option(..., "-o", "--output", metavar="EMB.h5", help=_help(J, "output")),
    batch_seconds: float = typer.Option(E.batch_seconds, metavar="S", help=_help(E, "batch_seconds")),
    max_batch: int = typer.Option(E.max_batch, metavar="N", help=_help(E, "max_batch")),
    workers: int | None = typer.Option(E.workers, metavar="N", help=_help(E, "workers")),
    chunk: float | None = typer.Option(E.chunk, metavar="S", help=_help(E, "chunk")),
    hop: float | None = typer.Option(E.hop, metavar="S", help=_help(E, "hop")),
    vad: bool = typer.Option(E.vad, "--vad", help=_help(E, "vad")),
    precision: ExtractPrecision = typer.Option(
        ExtractPrecision(E.precision), case_sensitive=False, help=_help(E, "precision")
    ),
    device: str = typer.Option(
        E.device, metavar="[auto|cpu|cuda|cuda:N]", autocompletion=complete_device, help=_help(E, "device")
    ),
    threads: int | None = typer.Option(J.threads, metavar="N", help=_help(J, "threads")),
    shard: str | None = typer.Option(
        J.shard, metavar="I/N", help=_help(J, "shard") + " Merge the shards' stores with --merge."
    ),
    merge: list[Path] | None = typer.Option(None, metavar="SHARD.h5", help=_help(J, "merge") + " Repeat the option."),
    export: ExportFormat | None = typer.Option(J.export, help=_help(J, "export")),
    overwrite: bool = typer.Option(J.overwrite, "--overwrite", help=_help(J, "overwrite")),
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
    share cores run many times slower together. Under torchrun (torchrun --nproc_per_node N -m spkemb
    extract ...) each rank embeds its part of the manifest (one GPU each on CUDA) and rank 0 merges
    them into OUTPUT; killed and rerun, it resumes.
    """
    from spkemb.embeddings.job import run_extract
    from spkemb.embeddings.ranks import RankFailed

    job = _build(
        J,
        model=model,
        manifest=manifest,
        output=str(output),
        shard=shard,
        merge=[str(m) for m in merge or ()],
        export=export.value if export else None,
        overwrite=overwrite,
        threads=threads,
    )
    opts = _build(
        E,
        batch_seconds=batch_seconds,
        max_batch=max_batch,
        workers=workers,
        chunk=chunk,
        hop=hop,
        vad=vad,
        precision=precision.value,
        device=device,
    )
    skipped: list[str] = []
    flags = command_flags(extract)

    def notice(kind: str, text: str) -> None:
        text = flag_text(text, flags)
        if kind == "skipped":
            skipped.append(text)
        elif kind == "ready":
            busy_notice(threads)
        else:
            console.print(escape(text), highlight=False, soft_wrap=True)

    try:
        with contextlib.ExitStack() as stack:
            summary = run_extract(job, opts, _progress_bar(stack), notice)
    except RankFailed as err:
        if err.quiet:  # another rank says it
            raise typer.Exit(err.code) from None
        raise fail(flag_text(str(err), flags), err.code) from None
    if summary.get("rank", 0) != 0:
        return
    _report(summary, skipped)
    if json_out:
        print_json(summary)


def _progress_bar(stack: contextlib.ExitStack) -> Any:
    """The job's progress callback: a bar (or log lines) from the first call on."""
    state: dict[str, Any] = {}

    def show(done: int, total: int, info: str) -> None:
        if "bar" not in state:
            bar: Any = stack.enter_context(progress())
            state["bar"], state["task"] = bar, bar.add_task("extract", total=total, info="")
        state["bar"].update(state["task"], completed=done, info=info)

    return show


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def _report(summary: dict[str, Any], skipped: list[str]) -> None:
    """Print what the job did: a store already complete, a merge, or the files skipped and rows written."""
    out = escape(summary["output"])
    if summary.get("up_to_date"):
        left_out = f", {summary['failed']} unreadable utterances left out" if summary["failed"] else ""
        _say(
            f"{out} is already complete for this encoder, manifest and options ({summary['embeddings']} "
            f"embeddings{left_out}); nothing to do (--overwrite extracts again)"
        )
    elif "merged" in summary:
        _say(f"merged {len(summary['merged'])} shards into {out} ({summary['embeddings']} embeddings)")
    else:
        for line in skipped[:5]:
            _say(f"[yellow]skipped[/] {escape(line)}")
        if len(skipped) > 5:
            _say(f"[yellow]skipped {len(skipped) - 5} more bad audio files[/]")
        if summary["failed"]:
            _say(f"[yellow]{summary['failed']} of the utterances were left out (unreadable or bad audio)[/]")
        ranks = f" by {summary['world_size']} ranks" if summary.get("world_size", 1) > 1 else ""
        resumed = f" ({summary['resumed']} from an earlier run)" if summary["resumed"] else ""
        _say(
            f"wrote {summary['embeddings']} embeddings to {out}{resumed}{ranks}; {summary['audio_seconds']:.0f} "
            f"audio-s in {summary['wall_seconds']:.1f} s ({summary['realtime_factor']:.0f}x real time)"
        )
    if summary.get("exported"):
        _say("exported " + ", ".join(escape(p) for p in summary["exported"]))
