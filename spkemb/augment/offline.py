"""Offline augmentation: write augmented copies of a manifest's audio, a new manifest and a record.

:func:`run_offline` is the job behind ``spkemb augment``. For each utterance and copy K it writes
``OUT/<utt_id without extension>-augK.wav`` (16-bit WAV at the options' sample rate), then
``OUT/manifest.tsv`` (same speakers; paths relative to OUT) and ``OUT/augment.jsonl`` (one line per
output file: ``utt_id``, ``source``, ``copy``, ``duration`` and ``augment``, the record of what was
applied). Each output is a fixed function of the seed, the source ``utt_id`` and K, so a rerun
skips the files already written and produces the same result with any number of workers. The
options are kept in ``OUT/augment-options.json``; a rerun with other options is refused. The
manifest and the record are written last, atomically; a failed run leaves the previous ones as they
were. One run at a time writes a given OUT (:func:`spkemb.utils.locking.output_lock`); a second is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from spkemb.augment.options import AugmentOptions
from spkemb.errors import InputError
from spkemb.options import opt

if TYPE_CHECKING:
    import numpy as np

    from spkemb.data.manifest import Utterance

OPTIONS_FILE = "augment-options.json"
RECORD_FILE = "augment.jsonl"
MANIFEST_FILE = "manifest.tsv"

PlanFn = Callable[[int, int], None]
ProgressFn = Callable[[int, int, str], None]

# Per worker process: the augmenter and the output sample rate (set by _init_worker).
_WORKER: dict[str, Any] = {}


@dataclass
class OfflineOptions(AugmentOptions):
    """What an offline augmentation run does; recorded in ``augment-options.json`` to guard resumes.

    The augmentation fields are :class:`~spkemb.augment.options.AugmentOptions`'; ``sample_rate``
    is that of the output audio; the values are checked when the options are made.
    """

    seed: int = opt(0, "random seed")
    sample_rate: int = opt(16000, "output sample rate (Hz)")

    def __post_init__(self) -> None:
        """Raise :class:`InputError` for options out of range or that would augment nothing; messages
        name the fields (``p_noise: ...``), which the CLI shows as its flags. Folders are checked by
        :func:`run_offline`."""
        if self.sample_rate < 1:
            raise InputError(f"sample_rate: must be positive, got {self.sample_rate}")
        try:
            AugmentOptions.__post_init__(self)
        except ValueError as err:  # AugmentOptions says "p_noise must be ...": one field-first line
            name, _, rest = str(err).partition(" ")
            raise InputError(f"{name}: {rest}") from None
        if not self.active:
            raise InputError("nothing to do: give `noise`, `rir`, `speed` or `gain`")

    def record(self) -> dict[str, Any]:
        """The options as written to ``augment-options.json``, folders resolved to absolute paths."""
        return {
            **self.to_dict(),
            "noise": [str(Path(d).resolve()) for d in self.noise],
            "rir": self.rir if self.rir in (None, "simulate") else str(Path(self.rir).resolve()),
        }


@dataclass(frozen=True)
class OfflineResult:
    """What :func:`run_offline` did: where it wrote, and how many files it wrote or found there."""

    output: Path
    manifest: Path
    records: Path
    utterances: int
    files: int
    written: int
    skipped: int


def run_offline(
    manifest: str | Path | Sequence[Utterance],
    out_dir: str | Path,
    options: OfflineOptions,
    *,
    copies: int = 1,
    workers: int = 1,
    on_plan: PlanFn | None = None,
    on_progress: ProgressFn | None = None,
) -> OfflineResult:
    """Write ``copies`` augmented copies of every utterance of ``manifest`` under ``out_dir``.

    ``manifest`` is a manifest file (``-`` reads stdin) or the utterances themselves. Bad input
    (``copies`` or ``workers`` below 1, an
    output path that is not a folder, a missing noise or RIR folder, a bad manifest, an ``utt_id``
    that cannot name a file under ``out_dir``, an ``out_dir`` whose files would replace the input
    manifest or that lies in a noise or RIR folder, an existing ``out_dir`` made with other options,
    an ``out_dir`` that another process is writing) is an :class:`InputError` raised before anything
    is written. Files already written by an earlier run with the same options are kept; ``workers``
    processes make the rest.

    ``on_plan(files, skipped)`` is called once the output folder is set up, before any audio is
    written. When there is audio to write, ``on_progress(done, total, utt_id)`` is called with
    ``(0, total, "")`` once the workers are ready (start a progress display there, not earlier: the
    worker processes are forked first), then after each file with the ``utt_id`` it wrote.
    """
    if copies < 1:
        raise InputError(f"copies: must be at least 1, got {copies}")
    if workers < 1:
        raise InputError(f"workers: must be at least 1, got {workers}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("output exists and is not a folder", out)
    for d in options.noise:
        if not Path(d).is_dir():
            raise InputError("no such noise folder", d)
    if options.rir not in (None, "simulate") and not Path(options.rir).is_dir():
        raise InputError("no such RIR folder (give a folder of RIR files or 'simulate')", options.rir)
    check_outputs(out, manifest if isinstance(manifest, (str, Path)) else None, options)

    from spkemb.augment.chain import from_options
    from spkemb.data.manifest import read_manifest
    from spkemb.utils.locking import output_lock

    record = options.record()
    utts = read_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
    augmenter = from_options(
        record["noise"],
        record["rir"],
        speed=options.speed,
        gain=options.gain,
        sample_rate=options.sample_rate,
        p_noise=options.p_noise,
        p_reverb=options.p_reverb,
    )
    tasks = plan_outputs(utts, out, copies)
    with output_lock(out, "augment output folder"):
        check_options(out, record)
        written, skipped = _write_all(tasks, out, record, augmenter, options, workers, on_plan, on_progress)
    return OfflineResult(
        output=out,
        manifest=out / MANIFEST_FILE,
        records=out / RECORD_FILE,
        utterances=len(utts),
        files=len(tasks),
        written=written,
        skipped=skipped,
    )


def _write_all(
    tasks: list[dict[str, Any]],
    out: Path,
    record: dict[str, Any],
    augmenter: Any,
    options: OfflineOptions,
    workers: int,
    on_plan: PlanFn | None,
    on_progress: ProgressFn | None,
) -> tuple[int, int]:
    """Write the audio that is not there yet, then the records and the manifest: (written, skipped)."""
    from spkemb.data.manifest import Utterance, write_manifest

    done = read_records(out / RECORD_FILE, out)
    todo = [t for t in tasks if t["utt_id"] not in done]
    skipped = len(tasks) - len(todo)
    out.mkdir(parents=True, exist_ok=True)
    _write_options(out, record)
    # Keep only the records whose audio exists; new ones are appended as files are finished.
    _write_records(out / RECORD_FILE, [done[t["utt_id"]] for t in tasks if t["utt_id"] in done])

    if on_plan:
        on_plan(len(tasks), skipped)
    with open(out / RECORD_FILE, "a", encoding="utf-8") as log:
        for rec in _run(todo, augmenter, options.sample_rate, options.seed, workers, on_progress):
            log.write(_dumps(rec) + "\n")
            log.flush()
            done[rec["utt_id"]] = rec

    rows = []
    for t in tasks:
        rec = done[t["utt_id"]]
        rows.append(Utterance(t["utt_id"], t["utt_id"], t["speaker"], float(rec["duration"]), options.sample_rate))
    _write_records(out / RECORD_FILE, [done[t["utt_id"]] for t in tasks])
    write_manifest(rows, out / MANIFEST_FILE)
    return len(todo), skipped


def check_outputs(out: Path, manifest: str | Path | None, options: OfflineOptions) -> None:
    """Refuse an output folder whose files would replace the input manifest, or that is (or lies in)
    a noise or RIR folder (its audio would become noise); before anything is written."""
    from spkemb.utils.fileio import refuse_output_onto_inputs

    for name in (MANIFEST_FILE, RECORD_FILE, OPTIONS_FILE):
        refuse_output_onto_inputs(out / name, {"manifest": manifest})
    here = Path(os.path.realpath(out))
    for what, folder in [("`noise`", d) for d in options.noise] + [("`rir`", options.rir)]:
        if folder in (None, "simulate"):
            continue
        there = Path(os.path.realpath(folder))
        if here == there or there in here.parents:
            raise InputError(f"the output folder is (inside) the {what} folder {folder}; choose another -o", out)


# -- planning ------------------------------------------------------------------------------------


def plan_outputs(utts: Sequence[Utterance], out: str | Path, copies: int) -> list[dict[str, Any]]:
    """One task per (utterance, copy), with a safe output id under ``out``.

    Each task is a dict: ``utt_id`` (the output's id, ``<utt_id without extension>-augK.wav``),
    ``path``, ``source``, ``source_path``, ``start``, ``end``, ``speaker``, ``copy``. An ``utt_id``
    that would name a file outside ``out``, two utterances mapping to one output, or an output that
    would overwrite an input is an :class:`InputError`.
    """
    from spkemb.audio import AUDIO_EXTENSIONS

    out = Path(out)
    sources = {os.path.normpath(os.path.abspath(u.path)) for u in utts}
    tasks: list[dict[str, Any]] = []
    owner: dict[str, str] = {}
    for u in utts:
        rel = PurePosixPath(u.utt_id.replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts or not rel.name or rel.name in (".", ".."):
            raise InputError(f"utt_id {u.utt_id!r} cannot name a file under the output folder")
        stem = rel.with_suffix("") if rel.suffix.lower() in AUDIO_EXTENSIONS else rel
        for k in range(copies):
            out_id = f"{stem}-aug{k}.wav"
            if out_id in owner:
                raise InputError(f"utt_ids {owner[out_id]!r} and {u.utt_id!r} both map to output {out_id!r}")
            owner[out_id] = u.utt_id
            path = out / out_id
            if os.path.normpath(os.path.abspath(path)) in sources:
                raise InputError(f"output {out_id!r} would overwrite an input file", path)
            tasks.append(
                {
                    "utt_id": out_id,
                    "path": str(path),
                    "source": u.utt_id,
                    "source_path": u.path,
                    "start": u.start,
                    "end": u.end,
                    "speaker": u.speaker,
                    "copy": k,
                }
            )
    return tasks


def check_options(out: str | Path, record: dict[str, Any]) -> None:
    """Refuse to resume in ``out`` if its ``augment-options.json`` differs from ``record``."""
    path = Path(out) / OPTIONS_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError("unreadable; remove it or use another output folder", path) from None
    changed = sorted(k for k in record if old.get(k) != record[k])
    if changed:
        raise InputError(
            f"this folder was made with different options ({', '.join(changed)}); "
            "use the same options to resume, or another output folder",
            path,
        )


def _write_options(out: Path, record: dict[str, Any]) -> None:
    from spkemb.utils.fileio import atomic_write_text

    path = out / OPTIONS_FILE
    if not path.is_file():
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_records(path: str | Path, out: str | Path) -> dict[str, dict[str, Any]]:
    """Records (by output ``utt_id``) of a previous run whose audio file exists under ``out``.

    A torn or malformed line is ignored.
    """
    path, out = Path(path), Path(out)
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("utt_id"), str) and "duration" in rec:
            if (out / rec["utt_id"]).is_file():
                done[rec["utt_id"]] = rec
    return done


def _write_records(path: Path, records: list[dict[str, Any]]) -> None:
    from spkemb.utils.fileio import atomic_write_text

    atomic_write_text(path, "".join(_dumps(r) + "\n" for r in records))


def _dumps(obj: Any) -> str:
    def default(o: Any) -> Any:
        if hasattr(o, "item"):  # numpy scalars
            return o.item()
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    return json.dumps(obj, default=default)


# -- the work ------------------------------------------------------------------------------------


def _run(
    todo: list[dict[str, Any]],
    augmenter: Any,
    sample_rate: int,
    seed: int,
    workers: int,
    on_progress: ProgressFn | None,
) -> Iterator[dict[str, Any]]:
    """Yield one record per finished task (in completion order)."""
    if not todo:
        return
    jobs = [(t, seed) for t in todo]
    total = len(jobs)
    if workers == 1 or len(todo) == 1:
        _init_worker(augmenter, sample_rate)
        if on_progress:
            on_progress(0, total, "")
        for n, job in enumerate(jobs, 1):
            rec = _process(job)
            if on_progress:
                on_progress(n, total, rec["utt_id"])
            yield rec
        return
    import multiprocessing

    # The pool starts its processes here, before on_progress can start a progress display's thread.
    with multiprocessing.get_context().Pool(
        min(workers, total), initializer=_init_worker, initargs=(augmenter, sample_rate)
    ) as pool:
        if on_progress:
            on_progress(0, total, "")
        for n, rec in enumerate(pool.imap_unordered(_process, jobs), 1):
            if on_progress:
                on_progress(n, total, rec["utt_id"])
            yield rec


def _init_worker(augmenter: Any, sample_rate: int) -> None:
    _WORKER["augmenter"] = augmenter
    _WORKER["sample_rate"] = sample_rate


def task_rng(seed: int, utt_id: str, copy: int) -> np.random.Generator:
    """The random generator of copy ``copy`` of source ``utt_id``: a fixed function of the three."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256(utt_id.encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, copy, *words])


def _process(job: tuple[dict[str, Any], int]) -> dict[str, Any]:
    """Augment one (utterance, copy) and write it atomically; return its record."""
    from spkemb.audio import load_audio, write_audio
    from spkemb.utils.fileio import sibling_path

    t, seed = job
    sr = _WORKER["sample_rate"]
    if t["start"] is not None or t["end"] is not None:
        x = load_audio(t["source_path"], sr, t["start"], t["end"])
    else:
        x = load_audio(t["source_path"], sr)
    y, record = _WORKER["augmenter"](x, sr, task_rng(seed, t["source"], t["copy"]))
    path = Path(t["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_path(path, f".partial{os.getpid()}.wav", prefix=".")
    try:
        write_audio(tmp, y, sr)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "utt_id": t["utt_id"],
        "source": t["source"],
        "copy": t["copy"],
        "duration": round(len(y) / sr, 4),
        "augment": record,
    }
