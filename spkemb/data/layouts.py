"""Folder layouts: find the audio under a root and give every file an utt_id and a speaker.

``utt_id`` is the file's path relative to the root, extension included, with ``/`` separators: the
way VoxCeleb trial lists name files (``id10270/x6uYqmx31kE/00001.wav``). The speaker comes from the
layout:

* ``voxceleb``: ``<spk>/<session>/<utt>.wav``; the speaker is the first folder.
* ``librispeech``: ``<spk>/<chapter>/<spk>-<chapter>-<utt>.flac``, or the files flat (or one level
  down) as ``<spk>-<chapter>-<utt>.flac``; the speaker is the leading number of the file name.
* ``cnceleb``: ``[data/]<spk>/<genre>-<session>-<utt>.flac``; the speaker is the first folder after an
  optional ``data/``, or the ``idNNNNN-`` prefix of eval file names such as ``id00800-enroll.flac``.
* ``regex``: ``speaker_regex`` is searched in the relative path; the speaker is its group named
  ``speaker``, else its first group.
* ``flat``: no speaker (unlabelled data).
* ``auto``: decided per file: a LibriSpeech file name gives its leading number, else the first
  folder (skipping a leading ``data/``), else no speaker.

``speaker_level`` (``prepare --speaker-level``) takes the speaker from one folder level instead:
``parent`` (the folder that holds the file), ``top`` (the first folder) or ``N`` (the N-th folder
from the top, 1 = ``top``), for corpora whose speaker folders sit below others
(``audio_data/female/F_0012/1.wav``). :func:`speaker_folder_hints` finds where ``auto`` was
likely fooled by such a corpus: a few first-level folders, each holding many folders of files.
``id_prefix`` (``prepare --id-prefix``) is put before every relative path (``PREFIX/relpath``), as
if the root were that folder of a larger corpus, so a prepared subfolder keeps the ids of the full
corpus's trial list; the layout reads the speaker from the prefixed path.

Durations and sample rates come from the file headers only (no decoding), read in parallel by a
thread pool since the work is I/O bound; :func:`verify_utterances` (``prepare --verify``) decodes
every file instead, which also finds truncated and NaN-filled files. A file that cannot be used
(unreadable, empty, 0 bytes, shorter than ``min_duration``, a name the layout cannot parse, or a
name that is not valid UTF-8) is returned as a ``(path, problem)`` pair and left out; it never
stops the scan. Names that are not UTF-8 are reported, not carried: a manifest is UTF-8 text, and
the bytes could only be smuggled into it in an escape no other tool reads.

Several roots: each root's utt_ids are relative to that root. If the same utt_id occurs under two
roots, *every* utt_id is prefixed with its root's folder name (``<rootname>/<relpath>``) so that ids
stay unique and uniform; if two such roots share a folder name, that is an :class:`InputError`.
Speakers are never renamed (VoxCeleb, LibriSpeech and CN-Celeb speaker ids are global).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from spkemb.audio import AUDIO_EXTENSIONS, audio_info, verify_audio
from spkemb.data.manifest import Utterance
from spkemb.data.wav_header import wav_facts
from spkemb.errors import InputError
from spkemb.utils.system import io_threads

LAYOUTS = ("auto", "voxceleb", "librispeech", "cnceleb", "regex", "flat")
DEFAULT_WORKERS = io_threads()  # two per core, at most 8
HINT_MIN_SUBFOLDERS = 10  # a folder-speaker with this many folders of files below it, and ...
HINT_MIN_SHARE = 0.25  # ... at least this share of all files, is likely a folder above the speakers
_CHUNK = 4096
_BATCH = 64  # headers one thread probes per future

Problem = tuple[str, str]
ProgressFn = Callable[[int, int], None]

_LIBRI_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_CNCELEB_NAME = re.compile(r"^(id\d+)-")


class _Unparsable(Exception):
    """The layout cannot find a speaker in this file's path."""


def list_audio(root: str | Path, extensions: Iterable[str] = AUDIO_EXTENSIONS) -> list[str]:
    """Relative paths (``/`` separators, sorted) of the audio files under ``root``.

    Hidden files and folders (names starting with ``.``, e.g. macOS ``._x.wav``) are skipped;
    symbolic links to folders are followed once (a link loop is not walked twice).
    """
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    root = Path(root)
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(exts):
                continue
            found.append(name if rel_dir == "." else f"{rel_dir}/{name}")
    return sorted(found)


def speaker_function(
    layout: str, speaker_regex: str | None = None, speaker_level: str | int | None = None
) -> Callable[[str], str]:
    """The function from a relative path (``/`` separators) to its speaker for ``layout`` (or for
    ``speaker_level``, which goes with ``auto`` only).

    It raises ``_Unparsable`` (reported as a problem for that file) when the path does not fit.
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    if speaker_level is not None:
        if layout != "auto" or speaker_regex is not None:
            raise InputError(
                f"`speaker_level` replaces the layout's speaker rule: give it without `layout` {layout}"
                + (" and `speaker_regex`" if speaker_regex is not None else "")
            )
        return _level_speaker(parse_speaker_level(speaker_level))
    if layout == "regex" or speaker_regex is not None:
        if layout != "regex":
            raise InputError(f"`speaker_regex` goes with `layout` regex, not `layout` {layout}")
        return _regex_speaker(speaker_regex)
    return {
        "auto": _auto_speaker,
        "voxceleb": _voxceleb_speaker,
        "librispeech": _librispeech_speaker,
        "cnceleb": _cnceleb_speaker,
        "flat": lambda rel: "",
    }[layout]


def parse_speaker_level(spec: str | int) -> str | int:
    """``parent``, ``top`` or a folder level ``N >= 1`` (1 = top); anything else is an InputError."""
    text = str(spec).strip().lower()
    if text in ("parent", "top"):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise InputError(f"`speaker_level` {spec!r}: give parent, top or a folder level N >= 1 (1 = the top folder)")


def _level_speaker(level: str | int) -> Callable[[str], str]:
    def speaker(rel: str) -> str:
        dirs, _ = _split(rel)
        if not dirs:
            raise _Unparsable(f"not inside a folder (`speaker_level` {level})")
        if level == "parent":
            return dirs[-1]
        if level == "top":
            return dirs[0]
        assert isinstance(level, int)
        if len(dirs) < level:
            raise _Unparsable(f"only {len(dirs)} folder(s) above the file (`speaker_level` {level})")
        return dirs[level - 1]

    return speaker


def check_id_prefix(prefix: str | None) -> str:
    """``prefix`` as a folder path without leading or trailing ``/`` (``""`` for none); an
    InputError when it could not be part of an utt_id."""
    if not prefix:
        return ""
    clean = prefix.strip("/")
    parts = clean.split("/")
    if not clean or any(c.isspace() for c in prefix) or any(p in ("", ".", "..") for p in parts):
        raise InputError(
            f"`id_prefix` {prefix!r}: give a relative folder path without spaces (trial lists are "
            "space-separated), such as 'id10270' or 'wav/id10270'"
        )
    return clean


def _split(rel: str) -> tuple[list[str], str]:
    parts = rel.split("/")
    return parts[:-1], parts[-1]


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _voxceleb_speaker(rel: str) -> str:
    dirs, _ = _split(rel)
    if not dirs:
        raise _Unparsable("not inside a speaker folder (voxceleb layout: <spk>/<session>/<utt>)")
    return dirs[0]


def _librispeech_speaker(rel: str) -> str:
    _, name = _split(rel)
    m = _LIBRI_NAME.match(_stem(name))
    if not m:
        raise _Unparsable("file name is not <spk>-<chapter>-<utt> (librispeech layout)")
    return m.group(1)


def _cnceleb_speaker(rel: str) -> str:
    dirs, name = _split(rel)
    m = _CNCELEB_NAME.match(name)
    if m:
        return m.group(1)
    if dirs and dirs[0] == "data":
        dirs = dirs[1:]
    if not dirs:
        raise _Unparsable("not inside a speaker folder (cnceleb layout: data/<spk>/<genre>-<session>-<utt>)")
    return dirs[0]


def _auto_speaker(rel: str) -> str:
    dirs, name = _split(rel)
    m = _LIBRI_NAME.match(_stem(name))
    if m:
        return m.group(1)
    if len(dirs) > 1 and dirs[0] == "data":
        dirs = dirs[1:]
    return dirs[0] if dirs else ""


def _regex_speaker(speaker_regex: str | None) -> Callable[[str], str]:
    if not speaker_regex:
        raise InputError("`layout` regex needs `speaker_regex` RE (its first group, or group 'speaker')")
    try:
        rx = re.compile(speaker_regex)
    except re.error as err:
        raise InputError(f"`speaker_regex` {speaker_regex!r} is not a valid regular expression ({err})") from None
    if rx.groups == 0:
        raise InputError(
            f"`speaker_regex` {speaker_regex!r} has no group: put the speaker in (...) or (?P<speaker>...)"
        )
    group: int | str = "speaker" if "speaker" in rx.groupindex else 1

    def speaker(rel: str) -> str:
        m = rx.search(rel)
        if not m or not m.group(group):
            raise _Unparsable(f"path does not match `speaker_regex` {speaker_regex!r}")
        return m.group(group)

    return speaker


def _probe(path: str, min_duration: float) -> tuple[int, float] | str:
    """(sample_rate, duration) from the header, or the problem as a string."""
    facts = wav_facts(path) if path[-4:].lower() == ".wav" else None  # plain WAV: parsed here, 10x faster
    if facts is not None:
        rate, frames, _ = facts
        if frames / rate < min_duration:
            return f"too short ({frames / rate:.3f} s < minimum {min_duration:g} s)"
        return rate, frames / rate
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        info = audio_info(path)
    except InputError as err:
        return err.message
    except OSError as err:
        return f"cannot read ({err.strerror or type(err).__name__})"
    if info.duration < min_duration:
        return f"too short ({info.duration:.3f} s < minimum {min_duration:g} s)"
    return info.sample_rate, info.duration


def probe_headers(
    paths: Sequence[str],
    min_duration: float = 0.0,
    workers: int = DEFAULT_WORKERS,
    progress: ProgressFn | None = None,
) -> list[tuple[int, float] | str]:
    """Header facts ``(sample_rate, duration)`` or a problem string for each path, in order."""
    out: list[tuple[int, float] | str] = []
    total = len(paths)
    if progress:
        progress(0, total)
    if not paths:
        return out

    def probe_batch(batch: Sequence[str]) -> list[tuple[int, float] | str]:
        return [_probe(p, min_duration) for p in batch]

    # a batch per future, smaller for a small corpus so that its progress still moves file by file
    size = max(1, min(_BATCH, total // (4 * max(1, workers))))
    with ThreadPoolExecutor(max_workers=max(1, min(workers, total))) as pool:
        # In chunks, so that a million-file corpus does not queue a million futures at once; each future
        # probes a batch (a future per file cost more than the parsed WAV header itself)
        for first in range(0, total, _CHUNK):
            chunk = paths[first : first + _CHUNK]
            batches = [chunk[i : i + size] for i in range(0, len(chunk), size)]
            for res in pool.map(probe_batch, batches):
                out.extend(res)
                if progress:
                    progress(len(out), total)
    return out


def scan(
    root: str | Path | Sequence[str | Path],
    layout: str = "auto",
    speaker_regex: str | None = None,
    extensions: Iterable[str] = AUDIO_EXTENSIONS,
    workers: int = DEFAULT_WORKERS,
    min_duration: float = 0.0,
    progress: ProgressFn | None = None,
    *,
    speaker_level: str | int | None = None,
    id_prefix: str | None = None,
) -> tuple[list[Utterance], list[Problem]]:
    """Scan one root (or several) for audio; return (utterances sorted by utt_id, problems).

    A missing root, or a root with no audio at all, is an :class:`InputError` naming it. Files the
    layout cannot parse or whose header is bad come back as ``(path, problem)`` and are left out.
    ``progress(done, total)`` is called while headers are read. ``speaker_level`` and ``id_prefix``:
    see the module docstring.
    """
    if not isinstance(root, (str, Path)):
        per_root = []
        problems: list[Problem] = []
        for r in root:
            found, probs = scan(
                r,
                layout,
                speaker_regex,
                extensions,
                workers,
                min_duration,
                progress,
                speaker_level=speaker_level,
                id_prefix=id_prefix,
            )
            per_root.append((r, found))
            problems += probs
        return merge_roots(per_root), sorted(problems)
    speaker_of = speaker_function(layout, speaker_regex, speaker_level)
    prefix = check_id_prefix(id_prefix)
    root_path = Path(root)
    if not root_path.exists():
        raise InputError("no such folder", root)
    if not root_path.is_dir():
        raise InputError("not a folder", root)
    exts = tuple(extensions)
    rels = list_audio(root_path, exts)
    if not rels:
        raise InputError(f"no audio files here (looked for {', '.join(exts)})", root)
    base = root_path.absolute()
    problems = []
    candidates: list[tuple[str, str, str]] = []  # rel, abs path, speaker
    for name in rels:
        path = str(base / name)
        rel = f"{prefix}/{name}" if prefix else name
        if not _is_utf8(path):
            problems.append(
                (
                    shown(path),
                    "file name is not valid UTF-8, which a manifest cannot hold; rename it (e.g. with convmv)",
                )
            )
            continue
        if any(c in rel for c in "\t\n\r"):
            problems.append((path, "name contains a tab or newline, which a manifest cannot hold"))
            continue
        try:
            spk = speaker_of(rel)
        except _Unparsable as err:
            problems.append((path, str(err)))
            continue
        candidates.append((rel, path, spk))
    facts = probe_headers([c[1] for c in candidates], min_duration, workers, progress)
    utts: list[Utterance] = []
    for (rel, path, spk), fact in zip(candidates, facts, strict=True):
        if isinstance(fact, str):
            problems.append((path, fact))
        else:
            sr, dur = fact
            utts.append(Utterance(utt_id=rel, path=path, speaker=spk, duration=dur, sample_rate=sr))
    utts.sort(key=lambda u: u.utt_id)
    return utts, sorted(problems)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.walk gives undecodable bytes as lone surrogates
        return False
    return True


def shown(path: str) -> str:
    """``path`` as printable text: bytes that are not UTF-8 appear as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _verify(path: str) -> tuple[int, float] | str:
    try:
        info = verify_audio(path)
    except InputError as err:
        return err.message
    return info.sample_rate, info.duration


def verify_utterances(
    utts: Sequence[Utterance], workers: int = DEFAULT_WORKERS, progress: ProgressFn | None = None
) -> tuple[list[Utterance], list[Problem]]:
    """Decode every file of ``utts`` (each once, ``workers`` threads): ``(usable utterances, problems)``.

    A file that does not decode to the end, holds NaN or infinite samples, is shorter than its
    header says, or ends before a segment's ``end`` is left out with its problem; the others get
    the duration that decoded (a whole-file utterance) rather than the header's.
    """
    paths = sorted({u.path for u in utts})
    facts: dict[str, tuple[int, float] | str] = {}
    if progress:
        progress(0, len(paths))
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths) or 1))) as pool:
        for first in range(0, len(paths), _CHUNK):
            chunk = paths[first : first + _CHUNK]
            facts.update(zip(chunk, pool.map(_verify, chunk), strict=True))
            if progress:
                progress(len(facts), len(paths))
    kept: list[Utterance] = []
    problems: list[Problem] = []
    for u in utts:
        fact = facts[u.path]
        if isinstance(fact, str):
            problems.append((u.path, fact))
        elif u.start is None and u.end is None:
            kept.append(replace(u, duration=fact[1], sample_rate=fact[0]))
        elif (u.end if u.end is not None else 0.0) > fact[1] + 1e-3:
            problems.append((u.path, f"segment {u.utt_id} ends at {u.end:.3f} s, after the audio ({fact[1]:.3f} s)"))
        else:
            kept.append(u)
    return kept, sorted(set(problems))


def merge_roots(per_root: Sequence[tuple[str | Path, list[Utterance]]]) -> list[Utterance]:
    """Join the utterances of several roots (see the module doc for the collision rule).

    The same root given twice (after resolving) is taken once.
    """
    unique: list[tuple[str | Path, list[Utterance]]] = []
    seen_roots: set[str] = set()
    for r, utts in per_root:
        key = os.path.realpath(r)
        if key not in seen_roots:
            seen_roots.add(key)
            unique.append((r, utts))
    if roots_collide(unique):
        names = [Path(os.path.abspath(r)).name for r, _ in unique]
        for k, name in enumerate(names):
            if names.count(name) > 1 or not name:
                raise InputError(
                    f"utt_ids collide between roots and this root's folder name {name!r} "
                    "is not unique either, so they cannot be told apart; rename or link it",
                    unique[k][0],
                )
        merged = [
            replace(u, utt_id=f"{name}/{u.utt_id}") for name, (_, utts) in zip(names, unique, strict=True) for u in utts
        ]
    else:
        merged = [u for _, utts in unique for u in utts]
    merged.sort(key=lambda u: u.utt_id)
    return merged


def roots_collide(per_root: Sequence[tuple[str | Path, list[Utterance]]]) -> bool:
    """Whether :func:`merge_roots` would prefix utt_ids with the roots' folder names."""
    ids: set[str] = set()
    seen_roots: set[str] = set()
    for r, utts in per_root:
        key = os.path.realpath(r)
        if key in seen_roots:
            continue
        seen_roots.add(key)
        these = {u.utt_id for u in utts}
        if ids & these:
            return True
        ids |= these
    return False


@dataclass(frozen=True)
class SpeakerFolderHint:
    """A first-level folder that ``auto`` took as one speaker, though it looks like a folder of speakers."""

    speaker: str  # the folder taken as the speaker
    files: int  # its utterances
    subfolders: int  # distinct folders below it that hold its files
    example: str  # the utt_id of one of its files
    level: int  # the folder level (1 = top) of the example's own folder: a --speaker-level that may fit


def speaker_folder_hints(utts: Sequence[Utterance]) -> list[SpeakerFolderHint]:
    """Speakers named by a folder that holds files in many folders below it (at least
    :data:`HINT_MIN_SUBFOLDERS`) and a large share of all files (:data:`HINT_MIN_SHARE`): with the
    ``auto`` layout (speaker = first folder) this is the mark of a corpus such as
    ``audio_data/female/F_0012/1.wav``, where every file gets the speaker ``audio_data``."""
    below: dict[str, set[str]] = {}
    files: dict[str, int] = {}
    example: dict[str, str] = {}
    for u in utts:
        dirs, _ = _split(u.utt_id)
        if u.speaker not in dirs:  # (a LibriSpeech name, a Kaldi utt2spk, ...)
            continue
        k = dirs.index(u.speaker)
        files[u.speaker] = files.get(u.speaker, 0) + 1
        example.setdefault(u.speaker, u.utt_id)
        if len(dirs) > k + 1:
            below.setdefault(u.speaker, set()).add("/".join(dirs[k + 1 :]))
    return [
        SpeakerFolderHint(spk, files[spk], len(subs), example[spk], example[spk].count("/"))
        for spk, subs in sorted(below.items())
        if len(subs) >= HINT_MIN_SUBFOLDERS and files[spk] >= HINT_MIN_SHARE * len(utts)
    ]
