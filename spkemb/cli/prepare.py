"""`spkemb prepare`: audio folders or Kaldi data folders to a manifest, trial lists, a Kaldi export.

The job is :func:`spkemb.data.prepare.prepare_manifest`; this module parses the options, shows the
progress bar, reports the files left out and prints the summary.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from spkemb.cli.common import console, guarded, print_json, progress
from spkemb.data.prepare import DEFAULT_MAX_TARGETS, DEFAULT_WORKERS, NONTARGETS_PER_TARGET
from spkemb.errors import InputError
from spkemb.utils.system import IO_THREADS_MAX, IO_THREADS_PER_CORE

if TYPE_CHECKING:
    from spkemb.data.layouts import SpeakerFolderHint

MAX_SHOWN_PROBLEMS = 10


class Layout(StrEnum):
    auto = "auto"
    voxceleb = "voxceleb"
    librispeech = "librispeech"
    cnceleb = "cnceleb"
    regex = "regex"
    flat = "flat"
    kaldi = "kaldi"


class TrialsFormat(StrEnum):
    voxceleb = "voxceleb"
    kaldi = "kaldi"


@guarded
def prepare(
    roots: list[Path] = typer.Argument(
        ...,
        metavar="ROOT",
        show_default=False,
        help="Audio folders, Kaldi data folders (with wav.scp), or one existing manifest (to make trials "
        "from it). utt_ids are paths relative to each ROOT, extension included.",
    ),
    output: str | None = typer.Option(
        None, "-o", "--output", metavar="MANIFEST", help="Manifest TSV to write ('-' for stdout)."
    ),
    layout: Layout = typer.Option(
        Layout.auto,
        "--layout",
        case_sensitive=False,
        help="How speakers are named: voxceleb SPK/SESSION/UTT; librispeech SPK-CHAPTER-UTT; "
        "cnceleb [data/]SPK/...; regex (--speaker-regex); flat (no speakers); kaldi (wav.scp + utt2spk); "
        "auto decides per file (LibriSpeech file name, else first folder) and imports folders with a wav.scp.",
    ),
    speaker_level: str | None = typer.Option(
        None,
        "--speaker-level",
        metavar="parent|top|N",
        help="Take the speaker from this folder level instead: parent (the folder holding each file), top "
        "(the first folder) or N (the N-th folder from the top, 1 = top); e.g. parent or 3 for "
        "audio_data/female/F_0012/1.wav.",
    ),
    id_prefix: str | None = typer.Option(
        None,
        "--id-prefix",
        metavar="PREFIX",
        help="Put PREFIX/ before every utt_id, as if ROOT were that folder of the full corpus: a prepared "
        "subfolder keeps the ids of the corpus's trial list (e.g. ROOT vox1/wav/id10270 with --id-prefix "
        "id10270). The speaker is read from the prefixed path.",
    ),
    speaker_regex: str | None = typer.Option(
        None,
        "--speaker-regex",
        metavar="RE",
        help="With --layout regex: searched in each relative path; the speaker is group 'speaker' or group 1.",
    ),
    min_duration: float = typer.Option(
        0.0, "--min-duration", metavar="S", help="Leave out (and report) files shorter than S seconds."
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        metavar="N",
        help="Threads reading audio headers (or decoding, with --verify). "
        f"[default: {IO_THREADS_PER_CORE} per core, at most {IO_THREADS_MAX}]",
    ),
    workers: int | None = typer.Option(None, "--workers", hidden=True, help="Old name of --threads."),
    verify: bool = typer.Option(
        False,
        "--verify/--no-verify",
        help="Decode every file, not only its header: slower (all the audio is read) but leaves out truncated "
        "or corrupt files and files with NaN or infinite samples, and records the durations that decode. "
        "By default only headers are read, so such files are listed with their header's duration "
        "(and skipped later, by extract or training).",
    ),
    trials: str | None = typer.Option(
        None, "--trials", metavar="OUT", help="Also write a trial list drawn from the labelled utterances."
    ),
    targets: int | None = typer.Option(
        None,
        "--targets",
        metavar="N",
        help=f"Target trials (default: every target pair, at most {DEFAULT_MAX_TARGETS:,}).",
        show_default=False,
    ),
    nontargets: int | None = typer.Option(
        None,
        "--nontargets",
        metavar="N",
        help=f"Non-target trials (default: {NONTARGETS_PER_TARGET} per target, at most every non-target pair).",
        show_default=False,
    ),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the trial draw."),
    exclude_speakers_of: list[Path] | None = typer.Option(
        None,
        "--exclude-speakers-of",
        metavar="MANIFEST",
        help="Leave the speakers of this (training) manifest out of the trials; repeatable.",
    ),
    trials_format: TrialsFormat = typer.Option(
        TrialsFormat.voxceleb,
        "--trials-format",
        case_sensitive=False,
        help="voxceleb: 'label enroll test' (1 = target); kaldi: 'enroll test target|nontarget'.",
    ),
    segment: float | None = typer.Option(
        None,
        "--segment",
        metavar="SECONDS",
        help="Cut every recording into segments of SECONDS (manifest start/end columns; ids UTT@START-END), "
        "e.g. for a PLDA training set, a cohort or development trials from one recording per speaker.",
    ),
    segment_min: float | None = typer.Option(
        None,
        "--segment-min",
        metavar="SECONDS",
        help="Keep a shorter last segment down to this. [default: 2/3 of --segment]",
    ),
    segment_max: float | None = typer.Option(
        None,
        "--segment-max",
        metavar="SECONDS",
        help="Draw segment lengths uniformly in [--segment-min, --segment-max] (seeded by --seed).",
    ),
    export_kaldi: Path | None = typer.Option(
        None, "--export-kaldi", metavar="DIR", help="Also write a Kaldi data folder (wav.scp, utt2spk, spk2utt)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Find the audio under ROOT(s), read durations from the headers, and write a manifest.

    The speaker of a file is its first folder unless --layout or --speaker-level says otherwise;
    when that makes a few folders that each hold many folders of files, a warning names the
    problem and the --speaker-level that fixes it. Files that cannot be used (unreadable, empty,
    too short, a name that is not UTF-8; with --verify also truncated, corrupt or NaN-filled) are
    reported on stderr and left out. If two ROOTs hold the same relative path, every utt_id gets
    its ROOT's folder name as a prefix. An output that would replace an input (a ROOT manifest, an
    --exclude-speakers-of manifest, a Kaldi ROOT for --export-kaldi) is refused before anything is read.
    """
    from spkemb.data.prepare import PrepareOptions, prepare_manifest

    # Check what only the CLI cares about (where output goes) before the slow part; prepare_manifest
    # checks its own arguments before it reads any audio. Bad usage fails fast and writes nothing.
    _check_usage(output, trials, json_out, threads, workers, export_kaldi)

    bar = progress(transient=True)
    task = None

    def on_progress(root: Path, done: int, total: int | None, what: str = "reading headers") -> None:
        nonlocal task
        if total is None:  # the start of a root
            bar.start()
            task = bar.add_task(f"{what}: {root.name or root}", total=None, info="")
        elif task is not None:
            bar.update(task, completed=done, total=total)

    def stop_bar() -> None:
        nonlocal task
        if task is not None:  # (stopping a bar that never started would print a blank line)
            bar.stop()
            task = None

    def on_read(problems: list[tuple[str, str]], prefixed: bool) -> None:
        stop_bar()
        _report_problems(problems)
        if prefixed:
            console.print(
                "[yellow]note:[/] the same utt_id occurs under two ROOTs: every utt_id now starts "
                "with its ROOT's folder name",
                highlight=False,
                soft_wrap=True,
            )

    try:
        options = PrepareOptions(
            layout=layout.value,
            speaker_regex=speaker_regex,
            min_duration=min_duration,
            workers=_threads(threads, workers),
            speaker_level=speaker_level,
            id_prefix=id_prefix,
            output=output,
            trials=trials,
            targets=targets,
            nontargets=nontargets,
            seed=seed,
            exclude_speakers_of=tuple(str(m) for m in exclude_speakers_of or ()),
            trials_format=trials_format.value,
            export_kaldi=None if export_kaldi is None else str(export_kaldi),
            verify=verify,
            segment=segment,
            segment_min=segment_min,
            segment_max=segment_max,
        )
        result = prepare_manifest(
            roots,
            options,
            on_progress=on_progress,
            on_read=on_read,
            on_verify=lambda root, done, total: on_progress(root, done, total, "decoding"),
        )
    finally:
        stop_bar()

    utts, problems, trial_list = result.utterances, result.problems, result.trials
    n_spk = result.speakers
    hours = result.hours
    where = f" → {output}" if output and output != "-" else ""
    console.print(
        f"{len(utts)} utterances, {n_spk} speakers, {hours:.2f} hours"
        f"{f', {len(problems)} skipped' if problems else ''}{where}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if trial_list is not None:
        console.print(
            f"trials: {trial_list.n_target} target + {trial_list.n_nontarget} non-target"
            f"{f' → {trials}' if trials != '-' else ''}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if export_kaldi is not None:
        console.print(f"Kaldi data folder → {export_kaldi}", highlight=False, markup=False, soft_wrap=True)
    for hint in result.speaker_hints:
        _warn_speaker_folder(hint, n_spk)
    for note in result.notes(layout.value):
        console.print("[yellow]note:[/] " + escape(_flagged(note)), highlight=False, soft_wrap=True)
    if json_out:
        print_json(
            {
                "utterances": len(utts),
                "speakers": n_spk,
                "hours": round(hours, 6),
                "skipped": len(problems),
                "manifest": output,
                "trials": trials,
                "targets": None if trial_list is None else trial_list.n_target,
                "nontargets": None if trial_list is None else trial_list.n_nontarget,
                "kaldi_dir": None if export_kaldi is None else str(export_kaldi),
                "speaker_folder_warnings": [h.speaker for h in result.speaker_hints],
            }
        )


def _check_usage(
    output: str | None,
    trials: str | None,
    json_out: bool,
    threads: int | None,
    workers: int | None,
    export_kaldi: Path | None,
) -> None:
    on_stdout = [
        name for name, used in (("-o -", output == "-"), ("--trials -", trials == "-"), ("--json", json_out)) if used
    ]
    if len(on_stdout) > 1:
        raise InputError(f"{' and '.join(on_stdout)} would all write to stdout; send all but one to files")
    if threads is not None and workers is not None:
        raise InputError("--workers is the old name of --threads: give one of them")
    if output is None and trials is None and export_kaldi is None:
        raise InputError("nothing to write: give -o MANIFEST ('-' for stdout), --trials OUT or --export-kaldi DIR")


def _threads(threads: int | None, workers: int | None) -> int:
    """--threads, or its old name --workers, or the default."""
    if threads is not None:
        return threads
    return workers if workers is not None else DEFAULT_WORKERS


def _warn_speaker_folder(h: SpeakerFolderHint, speakers: int) -> None:
    """The one-line warning for a folder that ``auto`` probably mistook for a speaker."""
    deeper = h.example.split("/")[h.level - 1]
    console.print(
        "[yellow]warning:[/] "
        + escape(
            f"the speaker of each file is its first folder, so {h.speaker!r} is one speaker (of {speakers}) with "
            f"{h.files} files in {h.subfolders} folders below it (e.g. {h.example}); if a deeper folder names the "
            f"speaker, prepare again with --speaker-level parent (the folder holding each file: {deeper} here) or "
            f"--speaker-level N (the N-th folder from the top: {h.level} for {deeper})"
        ),
        highlight=False,
        soft_wrap=True,
    )


def _flagged(text: str) -> str:
    """A core note or problem with its option fields (`` `speaker_level` ``) named as prepare's flags."""
    from spkemb.cli.errors import flag_text
    from spkemb.cli.params import command_flags

    return flag_text(text, command_flags(prepare))


def _report_problems(problems: list[tuple[str, str]]) -> None:
    if not problems:
        return
    console.print(
        f"[yellow]warning:[/] left out {len(problems)} file(s) that cannot be used:", highlight=False, soft_wrap=True
    )
    for path, problem in problems[:MAX_SHOWN_PROBLEMS]:
        console.print(f"  {path}: {_flagged(problem)}", highlight=False, markup=False, soft_wrap=True)
    if len(problems) > MAX_SHOWN_PROBLEMS:
        console.print(f"  ... and {len(problems) - MAX_SHOWN_PROBLEMS} more", highlight=False, soft_wrap=True)
