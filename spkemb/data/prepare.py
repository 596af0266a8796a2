"""Prepare: audio folders, Kaldi data folders or a manifest to a manifest, a trial list, a Kaldi export.

:func:`prepare_manifest` is the job behind ``spkemb prepare``. Its inputs are either audio folders
and Kaldi data folders (any mix; see :mod:`spkemb.data.layouts` for how utt_ids and speakers are
found and how several roots are merged) or one existing manifest (to make trials or a Kaldi export
from it). Files that cannot be used come back as ``(path, problem)`` pairs and are left out. Every
output is made in memory before the first one is written, so bad input writes nothing.

This module imports only the standard library at load time (the CLI reads its constants at start).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spkemb.errors import InputError
from spkemb.options import Options, opt
from spkemb.utils.system import io_threads

if TYPE_CHECKING:
    from spkemb.data.layouts import SpeakerFolderHint
    from spkemb.data.manifest import Utterance
    from spkemb.data.trials import Trials

DEFAULT_MAX_TARGETS = 10_000  # target trials drawn when no count is given (at most every target pair)
NONTARGETS_PER_TARGET = 10  # non-target trials per target trial when no count is given
DEFAULT_WORKERS = io_threads()  # two per core, at most 8

Problem = tuple[str, str]
ReadProgressFn = Callable[[Path, int, int | None], None]
ReadFn = Callable[[list[Problem], bool], None]


@dataclass(frozen=True)
class Source:
    """One input: ``kind`` is ``folder`` (audio under a layout), ``kaldi`` (a data folder) or ``manifest``."""

    kind: str
    path: Path


@dataclass
class PrepareResult:
    """What :func:`prepare_manifest` made: the merged utterances, the files left out, the trials, and
    the folders the ``auto`` layout probably mistook for speakers (see
    :func:`~spkemb.data.layouts.speaker_folder_hints`)."""

    utterances: list[Utterance]
    problems: list[Problem]
    trials: Trials | None = None
    speaker_hints: list[SpeakerFolderHint] = field(default_factory=list)

    def notes(self, layout: str = "auto", model_rate: int = 16000) -> list[str]:
        """What a user should hear about the result: no speakers found (and the regex layout that
        finds them in file names), audio at another sample rate than the models take."""
        out = []
        if self.utterances and self.speakers == 0 and layout in ("auto", "flat"):
            example = self.utterances[0].utt_id
            out.append(
                f"no utterance has a speaker: the files are not in speaker folders (e.g. {example!r}). If the file "
                "names hold the speaker (FSDD's 0_jackson_0.wav), prepare again with `layout` regex `speaker_regex` "
                "RE, its group 'speaker' the name (e.g. '^[^_]+_(?P<speaker>[^_]+)_'); training and trials need "
                "speakers"
            )
        rates: dict[int, int] = {}
        for u in self.utterances:
            if int(u.sample_rate) != model_rate:
                rates[int(u.sample_rate)] = rates.get(int(u.sample_rate), 0) + 1
        if rates:
            found = ", ".join(f"{n} at {r / 1000:g} kHz" for r, n in sorted(rates.items()))
            out.append(
                f"{sum(rates.values())} files ({found}) are not at {model_rate / 1000:g} kHz: the encoders take "
                f"{model_rate / 1000:g} kHz and resample them as they read them (8-kHz audio holds nothing above 4 kHz)"
            )
        return out

    @property
    def speakers(self) -> int:
        """Distinct non-empty speaker labels."""
        return len({u.speaker for u in self.utterances if u.speaker})

    @property
    def hours(self) -> float:
        return sum(u.duration for u in self.utterances) / 3600


def check_arguments(
    *,
    min_duration: float = 0.0,
    workers: int = DEFAULT_WORKERS,
    trials: str | Path | None = None,
    targets: int | None = None,
    nontargets: int | None = None,
    exclude_speakers_of: Sequence[str | Path] = (),
) -> None:
    """Check :func:`prepare_manifest`'s arguments (named as ``spkemb prepare`` names them)."""
    if not min_duration >= 0:  # (NaN too)
        raise InputError(f"`min_duration` must be >= 0, got {min_duration:g}")
    if workers < 1:
        raise InputError(f"`workers` must be >= 1, got {workers}")
    for name, value in (("`targets`", targets), ("`nontargets`", nontargets)):
        if value is not None and value < 0:
            raise InputError(f"{name} must be >= 0, got {value}")
    if trials is None and (targets is not None or nontargets is not None or exclude_speakers_of):
        raise InputError("`targets`, `nontargets` and `exclude_speakers_of` go with `trials` OUT")


def check_outputs(
    roots: Iterable[str | Path],
    *,
    output: str | Path | None = None,
    trials: str | Path | None = None,
    export_kaldi: str | Path | None = None,
    exclude_speakers_of: Iterable[str | Path] = (),
) -> None:
    """Refuse outputs that would replace an input, or each other, before anything is read.

    The manifest and the trial list must not be an input root, an ``exclude_speakers_of`` manifest,
    an existing folder or the same file; the Kaldi export folder must not be an input folder.
    """
    from spkemb.utils.fileio import refuse_output_onto_inputs, same_file

    inputs: list[tuple[str, str | Path | None]] = [("ROOT", r) for r in roots]
    inputs += [("`exclude_speakers_of`", m) for m in exclude_speakers_of]
    refuse_output_onto_inputs(output, inputs)
    refuse_output_onto_inputs(trials, inputs, option="`trials`")
    refuse_output_onto_inputs(export_kaldi, inputs, folder=True, option="`export_kaldi`")
    if output is not None and trials is not None and str(output) != "-" and same_file(output, trials):
        raise InputError("-o and `trials` name the same file", output)


def check_layout(
    layout: str, speaker_regex: str | None = None, speaker_level: str | int | None = None, id_prefix: str | None = None
) -> None:
    """Check ``layout`` (one of :data:`spkemb.data.layouts.LAYOUTS` or ``kaldi``), the regex, the
    speaker level and the id prefix."""
    from spkemb.data import layouts

    if layout == "kaldi":
        for option, value in (
            ("`speaker_regex`", speaker_regex),
            ("`speaker_level`", speaker_level),
            ("`id_prefix`", id_prefix),
        ):
            if value is not None:
                raise InputError(f"{option} is for audio folders, not `layout` kaldi")
    else:
        layouts.speaker_function(layout, speaker_regex, speaker_level)  # validates the layout and the rule
        layouts.check_id_prefix(id_prefix)


def classify_inputs(roots: Iterable[str | Path], layout: str = "auto") -> list[Source]:
    """What each root is: a manifest (a file), a Kaldi data folder or a folder of audio.

    With ``layout`` ``kaldi`` every folder must be a Kaldi data folder; with ``auto`` a folder holding
    a ``wav.scp`` is one. A missing root, an audio file, or a manifest given with other roots is an
    :class:`InputError`.
    """
    from spkemb.audio import AUDIO_EXTENSIONS
    from spkemb.data import kaldi

    sources: list[Source] = []
    for root in map(Path, roots):
        if not root.exists():
            raise InputError("no such file or folder", root)
        if root.is_file():
            if root.suffix.lower() in AUDIO_EXTENSIONS:
                raise InputError("is an audio file; give the folder that holds it", root)
            sources.append(Source("manifest", root))
        elif layout == "kaldi" or (layout == "auto" and kaldi.is_kaldi_dir(root)):
            if not kaldi.is_kaldi_dir(root):
                raise InputError("not a Kaldi data folder (no wav.scp)", root)
            sources.append(Source("kaldi", root))
        else:
            sources.append(Source("folder", root))
    if any(s.kind == "manifest" for s in sources) and len(sources) > 1:
        raise InputError("a manifest can only be the sole input (to make trials or a Kaldi export from it)")
    return sources


def speakers_of_manifests(manifests: Iterable[str | Path]) -> set[str]:
    """The speakers of these manifests (e.g. training manifests, to leave out of trials)."""
    from spkemb.data.manifest import read_manifest, speakers_of

    speakers: set[str] = set()
    for m in manifests:
        speakers.update(speakers_of(read_manifest(m)))
    return speakers


def read_inputs(
    sources: Sequence[Source],
    layout: str = "auto",
    speaker_regex: str | None = None,
    *,
    min_duration: float = 0.0,
    workers: int = DEFAULT_WORKERS,
    on_progress: ReadProgressFn | None = None,
    verify: bool = False,
    on_verify: ReadProgressFn | None = None,
    speaker_level: str | int | None = None,
    id_prefix: str | None = None,
) -> tuple[list[tuple[Path, list[Utterance]]], list[Problem]]:
    """Read the sources: ``([(root, its utterances), ...], problems)``.

    A manifest is read as it is. For folders and Kaldi folders, ``on_progress(root, done, total)`` is
    called with ``total`` None when a root is started, then while its headers are read. With
    ``verify``, every file is then decoded (:func:`~spkemb.data.layouts.verify_utterances`, also for
    a manifest), reported through ``on_verify`` in the same way. ``speaker_level`` and ``id_prefix``
    apply to audio folders (:func:`~spkemb.data.layouts.scan`); with ``id_prefix`` every source must be one.
    """
    from spkemb.data import kaldi, layouts
    from spkemb.data.manifest import read_manifest

    per_root: list[tuple[Path, list[Utterance]]] = []
    problems: list[Problem] = []
    for option, value in (("`id_prefix`", id_prefix), ("`speaker_level`", speaker_level)):
        if value and any(s.kind != "folder" for s in sources):
            other = next(s for s in sources if s.kind != "folder")
            what = "a Kaldi folder" if other.kind == "kaldi" else "a manifest"
            raise InputError(
                f"{option} is for audio folders; this is {what}, with ids and speakers of its own", other.path
            )
    if id_prefix and len(sources) > 1:
        raise InputError(
            f"`id_prefix` puts one prefix before every id, so it takes one ROOT, not {len(sources)}: "
            "prepare each with its own prefix, then merge the manifests"
        )
    if sources and sources[0].kind == "manifest":
        per_root.append((sources[0].path, read_manifest(sources[0].path)))
    for source in sources:
        if source.kind == "manifest":
            break
        root = source.path
        report: Callable[[int, int], None] | None = None
        if on_progress:
            on_progress(root, 0, None)
            report = functools.partial(on_progress, root)
        if source.kind == "kaldi":
            utts, probs = kaldi.load_kaldi_dir(root, min_duration=min_duration, workers=workers, progress=report)
        else:
            utts, probs = layouts.scan(
                root,
                layout,
                speaker_regex,
                workers=workers,
                min_duration=min_duration,
                progress=report,
                speaker_level=speaker_level,
                id_prefix=id_prefix,
            )
        per_root.append((root, utts))
        problems += probs
    if verify:
        for k, (root, utts) in enumerate(per_root):
            report = None
            if on_verify:
                on_verify(root, 0, None)
                report = functools.partial(on_verify, root)
            kept, probs = layouts.verify_utterances(utts, workers, report)
            per_root[k] = (root, kept)
            problems += probs
    return per_root, sorted(problems)


def draw_trials(
    utts: Sequence[Utterance],
    targets: int | None = None,
    nontargets: int | None = None,
    seed: int = 0,
    excluded: Iterable[str] = (),
) -> Trials:
    """:func:`~spkemb.data.trials.generate_trials` with the default counts for those not given.

    Default: every target pair, at most :data:`DEFAULT_MAX_TARGETS`; :data:`NONTARGETS_PER_TARGET`
    non-targets per target, at most every non-target pair. Speakers in ``excluded`` are left out.
    """
    from collections import Counter

    from spkemb.data.trials import generate_trials

    excluded = set(excluded)
    sizes = Counter(u.speaker for u in utts if u.speaker and u.speaker not in excluded)
    if len(sizes) < 2:
        hint = " after `exclude_speakers_of`" if excluded else ""
        raise InputError(f"need at least 2 labelled speakers to make trials{hint}, found {len(sizes)}")
    n = sum(sizes.values())
    max_target = sum(s * (s - 1) // 2 for s in sizes.values())
    max_non = n * (n - 1) // 2 - max_target
    if targets is None:
        targets = min(max_target, DEFAULT_MAX_TARGETS)
    if nontargets is None:
        nontargets = min(max_non, NONTARGETS_PER_TARGET * max(targets, 1))
    return generate_trials(utts, targets, nontargets, seed=seed, exclude_speakers=excluded)


@dataclass
class PrepareOptions(Options):
    """What :func:`prepare_manifest` reads and writes (``spkemb prepare``'s options); checked when made
    (an :class:`InputError` naming the option)."""

    layout: str = opt("auto", "folder layout (spkemb.data.layouts.LAYOUTS) or kaldi")
    speaker_regex: str | None = opt(None, "`layout` regex: a regex whose group 'speaker' names the speaker")
    min_duration: float = opt(0.0, "leave out files shorter than this (seconds)")
    workers: int = opt(DEFAULT_WORKERS, "threads reading audio headers")
    output: str | None = opt(None, "the manifest to write ('-': stdout)")
    trials: str | None = opt(None, "the trial list to write ('-': stdout)")
    targets: int | None = opt(None, "target trials (None: draw_trials' default)")
    nontargets: int | None = opt(None, "non-target trials (None: draw_trials' default)")
    seed: int = opt(0, "seed of the trial draw and of random segment lengths")
    exclude_speakers_of: tuple[str, ...] = opt((), "manifests whose speakers the trials leave out")
    trials_format: str = opt("voxceleb", "voxceleb or kaldi")
    export_kaldi: str | None = opt(None, "a Kaldi data folder to write")
    verify: bool = opt(False, "decode every file instead of reading headers")
    speaker_level: str | None = opt(None, "the folder level that names the speaker (N or parent)")
    id_prefix: str | None = opt(None, "put before every utt_id")
    segment: float | None = opt(None, "cut every recording into segments of this many seconds")
    segment_min: float | None = opt(None, "keep a shorter last segment down to this (default: 2/3 of segment)")
    segment_max: float | None = opt(None, "draw segment lengths uniformly in [segment_min, segment_max]")

    def __post_init__(self) -> None:
        self.exclude_speakers_of = tuple(str(m) for m in self.exclude_speakers_of)
        if self.speaker_level is not None:
            self.speaker_level = str(self.speaker_level)
        check_arguments(
            min_duration=self.min_duration,
            workers=self.workers,
            trials=self.trials,
            targets=self.targets,
            nontargets=self.nontargets,
            exclude_speakers_of=self.exclude_speakers_of,
        )
        check_layout(self.layout, self.speaker_regex, self.speaker_level, self.id_prefix)
        self._check_segments()

    def _check_segments(self) -> None:
        seg, low, high = self.segment, self.segment_min, self.segment_max
        if seg is None:
            if low is not None or high is not None:
                raise InputError("`segment_min` and `segment_max` go with `segment` SECONDS")
            return
        if not seg > 0:
            raise InputError(f"`segment` must be > 0 seconds, got {seg:g}")
        if low is not None and not 0 < low <= seg:
            raise InputError(f"`segment_min` must be in (0, `segment` {seg:g}], got {low:g}")
        if high is not None and not high >= (seg * 2 / 3 if low is None else low):
            raise InputError(f"`segment_max` must be at least `segment_min`, got {high:g}")


def prepare_manifest(
    roots: Sequence[str | Path],
    options: PrepareOptions | None = None,
    *,
    on_progress: ReadProgressFn | None = None,
    on_verify: ReadProgressFn | None = None,
    on_read: ReadFn | None = None,
    **kwargs: Any,
) -> PrepareResult:
    """Read ``roots`` and write a manifest to ``output``, trials to ``trials``, a Kaldi folder to
    ``export_kaldi`` (the fields of ``options``, or of a :class:`PrepareOptions` made of ``kwargs``).

    Each output is optional (``-`` writes the manifest or the trials to stdout). ``roots`` are audio
    folders read with ``layout`` (``kaldi``: Kaldi data folders; ``auto`` also imports folders that
    hold a ``wav.scp``), or one manifest. Files shorter than ``min_duration`` or unusable are left
    out and returned as problems; ``workers`` threads read the audio headers. With ``segment``,
    every recording is then cut into segments (:func:`~spkemb.data.segments.segment_utterances`).
    The trials (``targets`` / ``nontargets``, defaults as in :func:`draw_trials`) are drawn with
    ``seed`` from the labelled utterances (segments), leaving out the speakers of the
    ``exclude_speakers_of`` manifests, and written in ``trials_format`` (``voxceleb`` or ``kaldi``).

    Durations come from the headers; ``verify`` decodes every file instead (slower: it reads all the
    audio), leaving out files that are truncated, corrupt or hold NaN/infinite samples.
    ``speaker_level`` takes the speaker from that folder level instead of the layout's rule, and
    ``id_prefix`` is put before every utt_id (see :mod:`spkemb.data.layouts`). With ``auto`` and no
    ``speaker_level``, the result names folders that were probably mistaken for speakers.

    ``on_progress`` and ``on_verify`` are passed to :func:`read_inputs`. ``on_read(problems, prefixed)`` is called once
    the inputs are read, before anything else can fail: the files left out, and whether every
    utt_id gets its root's folder name as a prefix (the same utt_id occurs under two roots). Bad
    input is an :class:`InputError`, raised before any output is written; bad arguments are refused
    (by :class:`PrepareOptions`) before any audio is read.
    """
    o = options.replace(**kwargs) if options is not None else PrepareOptions(**kwargs)
    return _prepare(roots, o, on_progress, on_verify, on_read)


def _prepare(
    roots: Sequence[str | Path],
    o: PrepareOptions,
    on_progress: ReadProgressFn | None,
    on_verify: ReadProgressFn | None,
    on_read: ReadFn | None,
) -> PrepareResult:
    from spkemb.data import layouts

    check_outputs(
        roots, output=o.output, trials=o.trials, export_kaldi=o.export_kaldi, exclude_speakers_of=o.exclude_speakers_of
    )
    sources = classify_inputs(roots, o.layout)
    excluded = speakers_of_manifests(o.exclude_speakers_of)
    per_root, problems = read_inputs(
        sources,
        o.layout,
        o.speaker_regex,
        min_duration=o.min_duration,
        workers=o.workers,
        on_progress=on_progress,
        verify=o.verify,
        on_verify=on_verify,
        speaker_level=o.speaker_level,
        id_prefix=o.id_prefix,
    )
    if on_read:
        on_read(problems, len(per_root) > 1 and layouts.roots_collide(per_root))
    utts = layouts.merge_roots(per_root)
    if not utts:
        if sources[0].kind == "manifest":
            raise InputError("manifest has no utterances", sources[0].path)
        where = per_root[0][0] if len(per_root) == 1 else None
        raise InputError(f"no usable audio: all {len(problems)} file(s) were left out", where)
    if o.segment is not None:
        from spkemb.data.segments import segment_utterances

        utts = segment_utterances(utts, o.segment, o.segment_min, o.segment_max, o.seed)
        if not utts:
            raise InputError(f"no recording is as long as one segment (`segment` {o.segment:g}, `segment_min`)")
    trial_list = _write_outputs(utts, o, excluded)
    # Per folder ROOT, on its own ids: a manifest's or a Kaldi folder's speakers are its own, and ids
    # prefixed with the ROOT's name (colliding roots) would name the wrong folder level.
    hints = (
        [
            h
            for source, (_, root_utts) in zip(sources, per_root, strict=False)
            if source.kind == "folder"
            for h in layouts.speaker_folder_hints(root_utts)
        ]
        if o.layout == "auto" and o.speaker_level is None
        else []
    )
    return PrepareResult(utts, problems, trial_list, hints)


def _write_outputs(utts: list[Utterance], o: PrepareOptions, excluded: set[str]) -> Trials | None:
    """Make every output in memory (this is where bad input shows), then write them; the trials."""
    from spkemb.data import kaldi
    from spkemb.data.manifest import atomic_write_text, format_manifest

    manifest_text = format_manifest(utts) if o.output is not None else None
    trial_list: Trials | None = None
    trials_text: str | None = None
    if o.trials is not None:
        from spkemb.data.trials import format_trials

        trial_list = draw_trials(utts, o.targets, o.nontargets, o.seed, excluded)
        trials_text = format_trials(trial_list, o.trials_format)
    if o.export_kaldi is not None:
        kaldi.write_kaldi_dir(utts, o.export_kaldi)
    for path, text in ((o.trials, trials_text), (o.output, manifest_text)):
        if path is None or text is None:
            continue
        if str(path) == "-":
            import sys

            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            atomic_write_text(path, text)
    return trial_list
