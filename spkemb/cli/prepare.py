"""`spkemb prepare`: audio folders or Kaldi data folders to a manifest, trial lists, a Kaldi export."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from spkemb.cli.common import console, guarded, print_json, progress
from spkemb.errors import InputError

MAX_SHOWN_PROBLEMS = 10
DEFAULT_MAX_TARGETS = 10_000
NONTARGETS_PER_TARGET = 10


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
        ..., metavar="ROOT", show_default=False,
        help="Audio folders, Kaldi data folders (with wav.scp), or one existing manifest (to make trials "
        "from it). utt_ids are paths relative to each ROOT, extension included.",
    ),
    output: str | None = typer.Option(
        None, "-o", "--output", metavar="MANIFEST", help="Manifest TSV to write ('-' for stdout)."
    ),
    layout: Layout = typer.Option(
        Layout.auto, "--layout", case_sensitive=False,
        help="How speakers are named: voxceleb <spk>/<session>/<utt>; librispeech <spk>-<chapter>-<utt>; "
        "cnceleb [data/]<spk>/...; regex (--speaker-regex); flat (no speakers); kaldi (wav.scp + utt2spk); "
        "auto decides per file (LibriSpeech file name, else first folder) and imports folders with a wav.scp.",
    ),
    speaker_regex: str | None = typer.Option(
        None, "--speaker-regex", metavar="RE",
        help="With --layout regex: searched in each relative path; the speaker is group 'speaker' or group 1.",
    ),
    min_duration: float = typer.Option(
        0.0, "--min-duration", metavar="S", help="Leave out (and report) files shorter than S seconds."
    ),
    workers: int = typer.Option(8, "--workers", help="Threads reading audio headers."),
    trials: str | None = typer.Option(
        None, "--trials", metavar="OUT", help="Also write a trial list drawn from the labelled utterances."
    ),
    targets: int | None = typer.Option(
        None, "--targets", metavar="N",
        help=f"Target trials (default: every target pair, at most {DEFAULT_MAX_TARGETS:,}).",
        show_default=False,
    ),
    nontargets: int | None = typer.Option(
        None, "--nontargets", metavar="N",
        help=f"Non-target trials (default: {NONTARGETS_PER_TARGET} per target, at most every non-target pair).",
        show_default=False,
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the trial draw."),
    exclude_speakers_of: list[Path] | None = typer.Option(
        None, "--exclude-speakers-of", metavar="MANIFEST",
        help="Leave the speakers of this (training) manifest out of the trials; repeatable.",
    ),
    trials_format: TrialsFormat = typer.Option(
        TrialsFormat.voxceleb, "--trials-format", case_sensitive=False,
        help="voxceleb: 'label enroll test' (1 = target); kaldi: 'enroll test target|nontarget'.",
    ),
    export_kaldi: Path | None = typer.Option(
        None, "--export-kaldi", metavar="DIR", help="Also write a Kaldi data folder (wav.scp, utt2spk, spk2utt)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Find the audio under ROOT(s), read durations from the headers, and write a manifest.

    Files that cannot be used (unreadable, empty, too short) are reported on stderr and left out.
    If two ROOTs hold the same relative path, every utt_id gets its ROOT's folder name as a prefix.
    """
    from spkemb.audio import AUDIO_EXTENSIONS
    from spkemb.data import kaldi, layouts
    from spkemb.data.manifest import format_manifest, read_manifest, speakers_of

    # Check everything cheap before the slow part, so bad usage fails fast and writes nothing.
    if trials is None and (targets is not None or nontargets is not None or exclude_speakers_of):
        raise InputError("--targets, --nontargets and --exclude-speakers-of go with --trials OUT")
    on_stdout = [name for name, used in (("-o -", output == "-"), ("--trials -", trials == "-"),
                                         ("--json", json_out)) if used]
    if len(on_stdout) > 1:
        raise InputError(f"{' and '.join(on_stdout)} would all write to stdout; send all but one to files")
    if output is None and trials is None and export_kaldi is None:
        raise InputError("nothing to write: give -o MANIFEST ('-' for stdout), --trials OUT or --export-kaldi DIR")
    if min_duration < 0:
        raise InputError(f"--min-duration must be >= 0, got {min_duration:g}")
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    for name, value in (("--targets", targets), ("--nontargets", nontargets)):
        if value is not None and value < 0:
            raise InputError(f"{name} must be >= 0, got {value}")
    if layout == Layout.kaldi:
        if speaker_regex is not None:
            raise InputError("--speaker-regex goes with --layout regex, not --layout kaldi")
    else:
        layouts.speaker_function(layout.value, speaker_regex)  # validates the layout and the regex

    sources: list[tuple[str, Path]] = []  # (kind, path) with kind in folder, kaldi, manifest
    for root in roots:
        if not root.exists():
            raise InputError("no such file or folder", root)
        if root.is_file():
            if root.suffix.lower() in AUDIO_EXTENSIONS:
                raise InputError("is an audio file; give the folder that holds it", root)
            sources.append(("manifest", root))
        elif layout == Layout.kaldi or (layout == Layout.auto and kaldi.is_kaldi_dir(root)):
            if not kaldi.is_kaldi_dir(root):
                raise InputError("not a Kaldi data folder (no wav.scp)", root)
            sources.append(("kaldi", root))
        else:
            sources.append(("folder", root))
    if any(kind == "manifest" for kind, _ in sources) and len(sources) > 1:
        raise InputError("a manifest can only be the sole input (to make trials or a Kaldi export from it)")

    excluded: set[str] = set()
    for m in exclude_speakers_of or ():
        excluded.update(speakers_of(read_manifest(m)))

    # Read the inputs.
    per_root: list[tuple[Path, list]] = []
    problems: list[tuple[str, str]] = []
    if sources[0][0] == "manifest":
        per_root.append((sources[0][1], read_manifest(sources[0][1])))
    else:
        with progress(transient=True) as bar:
            for kind, root in sources:
                task = bar.add_task(f"reading headers: {root.name or root}", total=None, info="")

                def report(done: int, total: int, task: int = task) -> None:
                    bar.update(task, completed=done, total=total)

                if kind == "kaldi":
                    utts, probs = kaldi.load_kaldi_dir(root, min_duration=min_duration, workers=workers,
                                                       progress=report)
                else:
                    utts, probs = layouts.scan(root, layout.value, speaker_regex, workers=workers,
                                               min_duration=min_duration, progress=report)
                per_root.append((root, utts))
                problems += probs
    _report_problems(problems)
    if len(per_root) > 1 and layouts.roots_collide(per_root):
        console.print("[yellow]note:[/] the same utt_id occurs under two ROOTs: every utt_id now starts "
                      "with its ROOT's folder name", highlight=False, soft_wrap=True)
    utts = layouts.merge_roots(per_root)
    if not utts:
        if sources[0][0] == "manifest":
            raise InputError("manifest has no utterances", sources[0][1])
        where = per_root[0][0] if len(per_root) == 1 else None
        raise InputError(f"no usable audio: all {len(problems)} file(s) were left out", where)

    # Make every output in memory (this is where bad input shows), then write.
    manifest_text = format_manifest(utts) if output is not None else None
    trial_list = None
    if trials is not None:
        trial_list = _draw_trials(utts, targets, nontargets, seed, excluded)
    if export_kaldi is not None:
        kaldi.write_kaldi_dir(utts, export_kaldi)
    if trial_list is not None:
        from spkemb.data.trials import write_trials

        write_trials(trial_list, trials, trials_format.value)
    if output is not None and manifest_text is not None:
        from spkemb.data.manifest import atomic_write_text

        if output == "-":
            import sys

            sys.stdout.write(manifest_text)
            sys.stdout.flush()
        else:
            atomic_write_text(output, manifest_text)

    n_spk = len(speakers_of(utts))
    hours = sum(u.duration for u in utts) / 3600
    where = f" → {output}" if output and output != "-" else ""
    console.print(f"{len(utts)} utterances, {n_spk} speakers, {hours:.2f} hours"
                  f"{f', {len(problems)} skipped' if problems else ''}{where}",
                  highlight=False, markup=False, soft_wrap=True)
    if trial_list is not None:
        console.print(f"trials: {trial_list.n_target} target + {trial_list.n_nontarget} non-target"
                      f"{f' → {trials}' if trials != '-' else ''}", highlight=False, markup=False, soft_wrap=True)
    if export_kaldi is not None:
        console.print(f"Kaldi data folder → {export_kaldi}", highlight=False, markup=False, soft_wrap=True)
    if json_out:
        print_json({
            "utterances": len(utts),
            "speakers": n_spk,
            "hours": round(hours, 6),
            "skipped": len(problems),
            "manifest": output,
            "trials": trials,
            "targets": None if trial_list is None else trial_list.n_target,
            "nontargets": None if trial_list is None else trial_list.n_nontarget,
            "kaldi_dir": None if export_kaldi is None else str(export_kaldi),
        })


def _report_problems(problems: list[tuple[str, str]]) -> None:
    if not problems:
        return
    console.print(f"[yellow]warning:[/] left out {len(problems)} file(s) that cannot be used:",
                  highlight=False, soft_wrap=True)
    for path, problem in problems[:MAX_SHOWN_PROBLEMS]:
        console.print(f"  {path}: {problem}", highlight=False, markup=False, soft_wrap=True)
    if len(problems) > MAX_SHOWN_PROBLEMS:
        console.print(f"  ... and {len(problems) - MAX_SHOWN_PROBLEMS} more", highlight=False, soft_wrap=True)


def _draw_trials(utts: list, targets: int | None, nontargets: int | None, seed: int, excluded: set[str]):
    """generate_trials with the documented defaults for counts that were not given."""
    from collections import Counter

    from spkemb.data.trials import generate_trials

    sizes = Counter(u.speaker for u in utts if u.speaker and u.speaker not in excluded)
    if len(sizes) < 2:
        hint = " after --exclude-speakers-of" if excluded else ""
        raise InputError(f"need at least 2 labelled speakers to make trials{hint}, found {len(sizes)}")
    n = sum(sizes.values())
    max_target = sum(s * (s - 1) // 2 for s in sizes.values())
    max_non = n * (n - 1) // 2 - max_target
    if targets is None:
        targets = min(max_target, DEFAULT_MAX_TARGETS)
    if nontargets is None:
        nontargets = min(max_non, NONTARGETS_PER_TARGET * max(targets, 1))
    return generate_trials(utts, targets, nontargets, seed=seed, exclude_speakers=excluded)
