"""Extraction under ``torchrun``: the utterances split over the ranks, rank 0 merges.

``torchrun --nproc_per_node N -m spkemb extract MODEL manifest.tsv -o emb.h5`` starts N processes
(one GPU each on CUDA: ``cuda:LOCAL_RANK``). Each rank embeds one contiguous part of the manifest
(the parts hold about equal hours of audio) into its own store ``emb.h5.rankR-of-N`` beside the
output, resumable like any extraction (``.partial``); when every rank is done (a collective of the
process group: gloo on the CPU, NCCL on CUDA), rank 0 merges the parts into ``emb.h5``, which
records the whole manifest's digest as one process's extraction would, and removes them. Killed and
rerun with the same N, each rank resumes its part (a part already finished is kept as it is).

A rank that fails (bad audio everywhere, a full disk) tells the others through the same collective,
and rank 0 says in one line which rank failed and why; a rank that dies (kill -9, out of memory) is
found by the others when the collective breaks, and named by its unfinished part. The other ranks
exit with the same status without repeating it. The ranks' parts sit beside the output, so on many
machines the output's folder must be shared; for machines that share nothing, ``--shard I/N`` on
each and ``--merge`` on one remain.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spkemb.embeddings.plan import ExtractOptions, existing_store, parse_shard, shard_rows, utterances_digest
from spkemb.errors import InputError, WorkError
from spkemb.utils.fileio import sibling_path

if TYPE_CHECKING:
    from spkemb.data.manifest import Utterance
    from spkemb.embeddings.steps import ExtractJob, NoticeFn, ProgressFn

__all__ = ["launched_world", "rank_store", "split_by_audio", "run_ranks", "RankFailed"]

#: seconds a rank waits at the end for the slowest one (a resumed rank may have far more left to do)
WAIT_SECONDS = 7 * 24 * 3600.0


class RankFailed(WorkError):
    """A rank of a torchrun extraction failed. ``code`` is the exit status; ``quiet`` is true on
    the ranks that should exit with it without printing (rank 0 says it once)."""

    def __init__(self, message: str, code: int = 1, quiet: bool = False) -> None:
        super().__init__(message)
        self.code, self.quiet = code, quiet


def launched_world() -> int:
    """WORLD_SIZE as torchrun sets it (1 when absent), read without importing torch."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank_store(output: str | Path, rank: int, world: int) -> Path:
    """Where rank ``rank`` of ``world`` writes its part of ``output``."""
    return sibling_path(output, f".rank{rank}-of-{world}")


def split_by_audio(durations: Sequence[float], world: int) -> list[range]:
    """``world`` contiguous ranges of the rows, each with about the same total duration."""
    total = float(sum(durations)) or 1.0
    bounds, acc, r = [0], 0.0, 1
    for i, d in enumerate(durations):
        acc += d
        while r < world and acc >= total * r / world:
            bounds.append(i + 1)
            r += 1
    bounds += [len(durations)] * (world + 1 - len(bounds))
    return [range(bounds[k], bounds[k + 1]) for k in range(world)]


@contextlib.contextmanager
def _sigterm_stops(rank: int, world: int) -> Iterator[None]:
    """SIGTERM (torchrun stopping the ranks after one failed) raises :class:`RankFailed`: the store
    is closed cleanly, and the rank says so in one line."""

    def interrupt(*_: object) -> None:
        raise RankFailed(
            f"rank {rank} of {world}: stopped by torchrun (another rank failed: see torchrun's report); the rows "
            "embedded so far are kept: rerun the same torchrun command to resume",
            128 + signal.SIGTERM,
        )

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_ranks(
    job: ExtractJob,
    options: ExtractOptions,
    utts: Sequence[Utterance],
    on_progress: ProgressFn | None,
    on_notice: NoticeFn | None,
) -> dict[str, Any]:
    """This rank's share of ``job`` under torchrun; rank 0 merges and returns the job's summary."""
    from spkemb.embeddings.steps import up_to_date
    from spkemb.utils.encoder_files import encoder_checksum
    from spkemb.utils.locking import output_lock

    rank, world = int(os.environ.get("RANK", "0")), launched_world()
    part = [utts[i] for i in shard_rows(len(utts), parse_shard(job.shard))]
    sha = encoder_checksum(job.model)
    try:
        done = up_to_date(job, job.output, part, options, sha)  # (torch-free, alike on every rank)
    except InputError as err:  # a complete store made otherwise: said once
        raise RankFailed(str(err), 2, quiet=rank != 0) from None
    if done is not None:
        return {**done, "rank": rank, "world_size": world}
    with contextlib.ExitStack() as stack:
        if rank == 0:
            stack.enter_context(output_lock(job.output, "embedding store"))
        from spkemb.utils import distributed

        device = distributed.setup(options.device, timeout=WAIT_SECONDS)
        if rank == 0 and on_notice:
            on_notice("info", f"torchrun: world size {world}; each rank embeds its part of the {len(part)} utterances")
        parts = split_by_audio([u.duration for u in part], world)
        outcome = _embed_share(job, options.replace(device=str(device)), part, parts, sha, rank, on_progress, on_notice)
        outcomes = _gather(outcome, job.output, parts, rank, world)
        try:
            return _finish(job, part, parts, outcomes, sha, rank, world)
        finally:
            distributed.cleanup(wait=True)
    raise AssertionError("unreachable")  # pragma: no cover (mypy: the with block returns)


def _embed_share(
    job: ExtractJob,
    options: ExtractOptions,
    part: Sequence[Utterance],
    parts: Sequence[range],
    sha: str,
    rank: int,
    on_progress: ProgressFn | None,
    on_notice: NoticeFn | None,
) -> dict[str, Any]:
    """Embed this rank's rows into its store: ``{"ok": summary}``, or ``{"error": ..., "code": ...}``."""
    from spkemb.embeddings.steps import extract_part

    mine = [part[i] for i in parts[rank]]
    if not mine:
        return {"ok": {"embeddings": 0, "resumed": 0, "failed": 0, "audio_seconds": 0.0, "wall_seconds": 0.0}}
    store = rank_store(job.output, rank, len(parts))
    stale = existing_store(store, sha, mine, options)
    if stale is not None and stale[1]:  # a finished part of another run: this rank's own file to replace
        store.unlink()
    try:
        with _sigterm_stops(rank, len(parts)):
            summary = extract_part(
                job.replace(overwrite=False),
                options,
                mine,
                sha,
                output=store,
                on_progress=on_progress if rank == 0 else None,
                on_notice=on_notice if rank == 0 else _only_skipped(on_notice),
                shard=f"rank {rank} of {len(parts)}",
            )
    except RankFailed:
        raise
    except InputError as err:
        return {"error": str(err), "code": 2}
    except WorkError as err:
        return {"error": str(err), "code": 1}
    if summary.get("up_to_date"):  # finished by an earlier run
        summary["resumed"] = summary["embeddings"]
    return {"ok": summary}


def _only_skipped(on_notice: NoticeFn | None) -> NoticeFn | None:
    if on_notice is None:
        return None

    def notice(kind: str, text: str) -> None:
        if kind == "skipped":
            on_notice(kind, text)

    return notice


def _gather(outcome: dict[str, Any], output: str, parts: Sequence[range], rank: int, world: int) -> list[dict]:
    """Every rank's outcome (the collective that waits for all); a failed or vanished rank raises
    :class:`RankFailed`, loudly on rank 0 (or on the lowest rank still running) only."""
    from spkemb.embeddings.store import store_info
    from spkemb.utils import distributed

    try:
        outcomes = [dict(o) for o in distributed.all_gather_object(outcome)]  # type: ignore[call-overload]
    except RuntimeError:  # a rank is gone (killed): the group broke
        gone = [r for r in range(world) if r != rank and parts[r] and store_info(rank_store(output, r, world)) is None]
        distributed.cleanup(wait=False)
        who = ", ".join(str(r) for r in gone) or "another rank"
        raise RankFailed(
            f"rank {who} of {world} stopped before it finished (killed?); the finished parts and the rows "
            "embedded so far are kept: rerun the same torchrun command to resume",
            1,
            quiet=bool(gone) and min(set(range(world)) - set(gone)) != rank,
        ) from None
    failed = [(r, o) for r, o in enumerate(outcomes) if "error" in o]
    if failed:
        distributed.cleanup(wait=True)
        r, o = failed[0]
        more = f" (and {len(failed) - 1} more ranks)" if len(failed) > 1 else ""
        raise RankFailed(f"rank {r} of {world}{more}: {o['error']}", int(o["code"]), quiet=rank != 0)
    return outcomes


def _finish(
    job: ExtractJob,
    part: Sequence[Utterance],
    parts: Sequence[range],
    outcomes: Sequence[dict],
    sha: str,
    rank: int,
    world: int,
) -> dict[str, Any]:
    """Rank 0: merge the ranks' stores into the output and remove them; the job's summary."""
    from spkemb.embeddings.steps import export_store
    from spkemb.embeddings.store import merge_stores, read_embeddings

    if rank != 0:
        return {"rank": rank, "world_size": world}
    stores = [rank_store(job.output, r, world) for r in range(world) if parts[r]]
    out = merge_stores(
        stores,
        job.output,
        order=[u.utt_id for u in part],
        expect_sha256=sha,
        manifest_sha256=utterances_digest(part),
    )
    out_path = Path(job.output)
    # this run's parts, and the unfinished ones of a run with another world size
    for s in [*stores, *out_path.parent.glob(glob.escape(out_path.name) + ".rank*-of-*")]:
        s.unlink(missing_ok=True)
    oks = [o["ok"] for o in outcomes]
    audio = sum(float(o.get("audio_seconds", 0.0)) for o in oks)
    wall = max(float(o.get("wall_seconds", 0.0)) for o in oks)
    summary = {
        "output": str(out),
        "embeddings": len(read_embeddings(out)),
        "resumed": sum(int(o.get("resumed", 0)) for o in oks),
        "failed": sum(int(o.get("failed", 0)) for o in oks),
        "audio_seconds": round(audio, 3),
        "wall_seconds": round(wall, 3),
        "realtime_factor": round(audio / wall, 2) if wall else 0.0,
        "encoder": next((o["encoder"] for o in oks if "encoder" in o), None),
        "up_to_date": False,
        "rank": 0,
        "world_size": world,
    }
    export_store(job, summary)
    return summary
