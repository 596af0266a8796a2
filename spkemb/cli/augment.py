"""`spkemb augment`: write augmented copies of a manifest's audio, a new manifest and a record.

For each utterance and copy K it writes ``OUT/<utt_id without extension>-augK.wav`` (16-bit WAV at
``--sample-rate``), then ``OUT/manifest.tsv`` (same speakers; paths relative to OUT) and
``OUT/augment.jsonl`` (one line per output file: ``utt_id``, ``source``, ``copy``, ``duration``
and ``augment``, the record of what was applied). Each output is a fixed function of
``--seed``, the source ``utt_id`` and K, so a rerun skips the files already written and produces
the same result with any number of ``--workers``. The manifest and the record are written last,
atomically; a failed run leaves the previous ones as they were.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

import typer

from spkemb.cli.common import console, guarded, print_json, progress
from spkemb.errors import InputError

OPTIONS_FILE = "augment-options.json"
RECORD_FILE = "augment.jsonl"
MANIFEST_FILE = "manifest.tsv"

# Per worker process: the augmenter and the output sample rate (set by _init_worker).
_WORKER: dict[str, Any] = {}


@guarded
def augment(
    manifest: str = typer.Argument(..., help="Input manifest (TSV; '-' reads stdin)."),
    output: str = typer.Option(
        ..., "-o", "--output", help="Output folder: audio files, manifest.tsv and augment.jsonl go here."
    ),
    noise: list[str] | None = typer.Option(
        None,
        "--noise",
        metavar="DIR",
        help="Noise folder, repeatable: a MUSAN root (noise/, music/, speech/ → noise, music, babble) "
        "or a plain folder of noise audio.",
    ),
    rir: str | None = typer.Option(
        None, "--rir", metavar="DIR|simulate", help="Folder of room impulse responses, or 'simulate'."
    ),
    speed: bool = typer.Option(
        False, "--speed/--no-speed", help="Speed perturbation by 0.9, 1.0 or 1.1 (changes duration and pitch)."
    ),
    gain: bool = typer.Option(False, "--gain/--no-gain", help="Random gain in -6..6 dB."),
    copies: int = typer.Option(1, "--copies", metavar="N", help="Augmented copies per utterance."),
    p_noise: float = typer.Option(0.6, "--p-noise", help="Probability of adding noise to a copy."),
    p_reverb: float = typer.Option(0.3, "--p-reverb", help="Probability of reverberating a copy."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    sample_rate: int = typer.Option(16000, "--sample-rate", help="Output sample rate (Hz)."),
    workers: int = typer.Option(1, "--workers", help="Worker processes."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Write augmented copies of the audio in MANIFEST (noise, reverb, speed, gain) to a folder."""
    if copies < 1:
        raise InputError(f"--copies must be at least 1, got {copies}")
    if sample_rate < 1:
        raise InputError(f"--sample-rate must be positive, got {sample_rate}")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    for name, p in (("--p-noise", p_noise), ("--p-reverb", p_reverb)):
        if not 0.0 <= p <= 1.0:
            raise InputError(f"{name} must be between 0 and 1, got {p}")
    noise = list(noise or [])
    if rir is not None and not rir.strip():
        raise InputError("--rir needs a folder of RIR files or 'simulate'")
    if not (noise or rir or speed or gain):
        raise InputError("nothing to do: give --noise, --rir, --speed or --gain")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise InputError("output exists and is not a folder", out)

    for d in noise:
        if not Path(d).is_dir():
            raise InputError("no such noise folder", d)
    if rir not in (None, "simulate") and not Path(rir).is_dir():
        raise InputError("no such RIR folder (give a folder of RIR files or 'simulate')", rir)

    from spkemb.augment.chain import from_options
    from spkemb.data.manifest import read_manifest

    options = {
        "noise": [str(Path(d).resolve()) for d in noise],
        "rir": rir if rir in (None, "simulate") else str(Path(rir).resolve()),
        "speed": speed,
        "gain": gain,
        "p_noise": p_noise,
        "p_reverb": p_reverb,
        "seed": seed,
        "sample_rate": sample_rate,
    }
    utts = read_manifest(manifest)
    augmenter = from_options(
        options["noise"],
        options["rir"],
        speed=speed,
        gain=gain,
        sample_rate=sample_rate,
        p_noise=p_noise,
        p_reverb=p_reverb,
    )
    tasks = _plan(utts, out, copies)
    _check_options(out, options)

    done = _read_records(out / RECORD_FILE, out)
    todo = [t for t in tasks if t["utt_id"] not in done]
    skipped = len(tasks) - len(todo)
    out.mkdir(parents=True, exist_ok=True)
    _write_options(out, options)
    # Keep only the records whose audio exists; new ones are appended as files are finished.
    _write_records(out / RECORD_FILE, [done[t["utt_id"]] for t in tasks if t["utt_id"] in done])

    if skipped:
        console.print(f"{skipped} of {len(tasks)} output files already there; skipping them", highlight=False)
    with open(out / RECORD_FILE, "a", encoding="utf-8") as log:
        for rec in _run(todo, augmenter, sample_rate, seed, workers):
            log.write(_dumps(rec) + "\n")
            log.flush()
            done[rec["utt_id"]] = rec

    from spkemb.data.manifest import Utterance, write_manifest

    rows = []
    for t in tasks:
        rec = done[t["utt_id"]]
        rows.append(Utterance(t["utt_id"], t["utt_id"], t["speaker"], float(rec["duration"]), sample_rate))
    _write_records(out / RECORD_FILE, [done[t["utt_id"]] for t in tasks])
    write_manifest(rows, out / MANIFEST_FILE)

    console.print(
        f"wrote {len(todo)} augmented files ({skipped} already there), {out / MANIFEST_FILE} and {out / RECORD_FILE}",
        highlight=False,
    )
    if json_out:
        print_json(
            {
                "output": str(out),
                "manifest": str(out / MANIFEST_FILE),
                "records": str(out / RECORD_FILE),
                "utterances": len(utts),
                "files": len(tasks),
                "written": len(todo),
                "skipped": skipped,
            }
        )


# -- planning ------------------------------------------------------------------------------------


def _plan(utts: list, out: Path, copies: int) -> list[dict[str, Any]]:
    """One task per (utterance, copy), with a safe output id under ``out``."""
    from spkemb.audio import AUDIO_EXTENSIONS

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


def _check_options(out: Path, options: dict[str, Any]) -> None:
    path = out / OPTIONS_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError("unreadable; remove it or use another output folder", path) from None
    changed = sorted(k for k in options if old.get(k) != options[k])
    if changed:
        raise InputError(
            f"this folder was made with different options ({', '.join(changed)}); "
            "use the same options to resume, or another output folder",
            path,
        )


def _write_options(out: Path, options: dict[str, Any]) -> None:
    from spkemb.data.manifest import atomic_write_text

    path = out / OPTIONS_FILE
    if not path.is_file():
        atomic_write_text(path, json.dumps(options, indent=2, sort_keys=True) + "\n")


def _read_records(path: Path, out: Path) -> dict[str, dict[str, Any]]:
    """Records of a previous run whose audio file exists (a torn last line is ignored)."""
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
    from spkemb.data.manifest import atomic_write_text

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


def _run(todo: list[dict[str, Any]], augmenter: Any, sample_rate: int, seed: int, workers: int):
    """Yield one record per finished task (in completion order)."""
    if not todo:
        return
    jobs = [(t, seed) for t in todo]
    if workers == 1 or len(todo) == 1:
        _init_worker(augmenter, sample_rate)
        with progress() as bar:
            task = bar.add_task("augment", total=len(jobs), info="")
            for job in jobs:
                rec = _process(job)
                bar.update(task, advance=1, info=rec["utt_id"])
                yield rec
        return
    import multiprocessing

    # The pool starts its processes here, before the progress bar starts its thread.
    with multiprocessing.get_context().Pool(
        min(workers, len(jobs)), initializer=_init_worker, initargs=(augmenter, sample_rate)
    ) as pool:
        with progress() as bar:
            task = bar.add_task("augment", total=len(jobs), info="")
            for rec in pool.imap_unordered(_process, jobs):
                bar.update(task, advance=1, info=rec["utt_id"])
                yield rec


def _init_worker(augmenter: Any, sample_rate: int) -> None:
    _WORKER["augmenter"] = augmenter
    _WORKER["sample_rate"] = sample_rate


def _task_rng(seed: int, utt_id: str, copy: int):
    import hashlib

    import numpy as np

    digest = hashlib.sha256(utt_id.encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, copy, *words])


def _process(job: tuple[dict[str, Any], int]) -> dict[str, Any]:
    """Augment one (utterance, copy) and write it atomically; return its record."""
    from spkemb.audio import load_audio, write_audio

    t, seed = job
    sr = _WORKER["sample_rate"]
    if t["start"] is not None or t["end"] is not None:
        x = load_audio(t["source_path"], sr, t["start"], t["end"])
    else:
        x = load_audio(t["source_path"], sr)
    y, record = _WORKER["augmenter"](x, sr, _task_rng(seed, t["source"], t["copy"]))
    path = Path(t["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{os.getpid()}.wav")
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
