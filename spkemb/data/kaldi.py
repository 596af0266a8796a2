"""Kaldi data folders: import ``wav.scp`` + ``utt2spk`` (+ ``segments``), export them with ``spk2utt``.

Import reads plain paths only: a piped command (``sox x.sph -t wav - |``), an ark offset
(``foo.ark:1234``) or ``-`` (stdin) in ``wav.scp`` is an :class:`InputError` naming the line.
Relative paths resolve against the current folder (Kaldi's convention: recipes run from the
recipe folder), and, when nothing is there, against the data folder itself. ``utt2spk`` may be
missing (then every speaker is empty, i.e. unlabelled). Durations come from the audio headers, or
from ``segments`` (an end time of ``-1`` means the end of the recording).

Export writes ``wav.scp``, ``utt2spk``, ``spk2utt`` and, when any utterance is a segment,
``segments`` (then ``wav.scp`` lists recordings, named after the file stems), each file sorted the
way ``LC_ALL=C sort`` would and written atomically. An utterance without a speaker is its own
speaker, Kaldi's convention for unknown speakers. Ids with whitespace cannot be written.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from spkemb.data.layouts import DEFAULT_WORKERS, Problem, ProgressFn, probe_headers
from spkemb.data.manifest import Utterance, atomic_write_text
from spkemb.errors import InputError

_ARK_OFFSET = re.compile(r":\d+$")
_WS = re.compile(r"\s")


def is_kaldi_dir(path: str | Path) -> bool:
    """A folder holding a ``wav.scp``."""
    return Path(path, "wav.scp").is_file()


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", path) from None
    except OSError as err:
        raise InputError(f"cannot read ({err.strerror or type(err).__name__})", path) from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield lineno, line.strip().split(maxsplit=1)


def _read_wav_scp(path: Path, data_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for lineno, fields in _lines(path):
        if len(fields) < 2:
            raise InputError(f"line {lineno}: expected '<id> <path>'", path)
        key, rx = fields[0], fields[1].strip()
        if rx.endswith("|"):
            raise InputError(
                f"line {lineno}: piped commands ('{rx}') are not supported; "
                "decode the audio to files and list their paths",
                path,
            )
        if rx == "-":
            raise InputError(f"line {lineno}: reading audio from stdin ('-') is not supported", path)
        if _ARK_OFFSET.search(rx) and not os.path.exists(rx):
            raise InputError(
                f"line {lineno}: ark offsets ('{rx}') are not supported; list plain audio file paths", path
            )
        if key in out:
            raise InputError(f"line {lineno}: duplicate id {key!r}", path)
        if not os.path.isabs(rx) and not os.path.exists(rx) and (data_dir / rx).exists():
            rx = str(data_dir / rx)
        out[key] = os.path.abspath(rx)
    if not out:
        raise InputError("empty wav.scp", path)
    return out


def _read_utt2spk(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for lineno, fields in _lines(path):
        if len(fields) != 2 or _WS.search(fields[1]):
            raise InputError(f"line {lineno}: expected '<utt> <speaker>'", path)
        if fields[0] in out:
            raise InputError(f"line {lineno}: duplicate utterance {fields[0]!r}", path)
        out[fields[0]] = fields[1]
    return out


def _read_segments(path: Path, recordings: dict[str, str]) -> dict[str, tuple[str, float, float | None]]:
    out: dict[str, tuple[str, float, float | None]] = {}
    for lineno, fields in _lines(path):
        parts = [fields[0], *fields[1].split()] if len(fields) == 2 else fields
        if len(parts) != 4:
            raise InputError(f"line {lineno}: expected '<segment> <recording> <start> <end>'", path)
        seg, reco = parts[0], parts[1]
        try:
            start, end = float(parts[2]), float(parts[3])
        except ValueError:
            raise InputError(f"line {lineno}: start and end must be numbers of seconds", path) from None
        if reco not in recordings:
            raise InputError(f"line {lineno}: recording {reco!r} is not in wav.scp", path)
        if start < 0 or (end != -1 and end <= start):
            raise InputError(f"line {lineno}: bad times {parts[2]} {parts[3]} (need 0 <= start < end)", path)
        if seg in out:
            raise InputError(f"line {lineno}: duplicate segment {seg!r}", path)
        out[seg] = (reco, start, None if end == -1 else end)
    return out


def load_kaldi_dir(
    data_dir: str | Path,
    *,
    min_duration: float = 0.0,
    workers: int = DEFAULT_WORKERS,
    progress: ProgressFn | None = None,
) -> tuple[list[Utterance], list[Problem]]:
    """Import a Kaldi data folder: (utterances sorted by utt_id, problems).

    A malformed file is an :class:`InputError`; audio that cannot be used (unreadable, empty,
    shorter than ``min_duration``, a segment past the end) is a ``(path, problem)`` and left out.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise InputError("no such folder" if not d.exists() else "not a folder", d)
    if not is_kaldi_dir(d):
        raise InputError("not a Kaldi data folder (no wav.scp)", d)
    recordings = _read_wav_scp(d / "wav.scp", d)
    spk = _read_utt2spk(d / "utt2spk")
    seg_file = d / "segments"
    segments = _read_segments(seg_file, recordings) if seg_file.is_file() else None

    if segments is None:
        keys = sorted(recordings)
    else:
        keys = sorted({reco for reco, _, _ in segments.values()})
    paths = [recordings[k] for k in keys]
    facts = dict(zip(keys, probe_headers(paths, 0.0 if segments else min_duration, workers, progress), strict=True))

    utts: list[Utterance] = []
    problems: list[Problem] = []
    if segments is None:
        for key in keys:
            fact = facts[key]
            if isinstance(fact, str):
                problems.append((recordings[key], fact))
            else:
                utts.append(Utterance(key, recordings[key], spk.get(key, ""), fact[1], fact[0]))
    else:
        bad_reported: set[str] = set()
        for seg, (reco, start, end) in sorted(segments.items()):
            fact, path = facts[reco], recordings[reco]
            if isinstance(fact, str):
                if reco not in bad_reported:
                    bad_reported.add(reco)
                    problems.append((path, fact))
                continue
            sr, file_dur = fact
            if start >= file_dur:
                problems.append(
                    (path, f"segment {seg} starts at {start:g} s, after the end of the recording ({file_dur:.3f} s)")
                )
                continue
            dur = (file_dur if end is None else min(end, file_dur)) - start
            if dur < min_duration:
                problems.append((path, f"segment {seg} too short ({dur:.3f} s < minimum {min_duration:g} s)"))
                continue
            utts.append(Utterance(seg, path, spk.get(seg, ""), dur, sr, start=start, end=end))
    utts.sort(key=lambda u: u.utt_id)
    return utts, sorted(problems)


def read_kaldi_dir(data_dir: str | Path, workers: int = DEFAULT_WORKERS) -> list[Utterance]:
    """Import a Kaldi data folder; any unusable audio is an :class:`InputError` (see :func:`load_kaldi_dir`)."""
    utts, problems = load_kaldi_dir(data_dir, workers=workers)
    if problems:
        path, problem = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(problem + more, path)
    return utts


def _check_id(kind: str, value: str) -> None:
    if not value or _WS.search(value):
        raise InputError(f"{kind} {value!r} is empty or contains whitespace, which Kaldi files cannot hold")


def _recording_ids(paths: Iterable[str]) -> dict[str, str]:
    """A unique, whitespace-free recording id per distinct path: the file stem, numbered on clashes."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for p in sorted(set(paths)):
        stem = _WS.sub("_", Path(p).stem) or "rec"
        rid, k = stem, 1
        while rid in used:
            k += 1
            rid = f"{stem}-{k}"
        used.add(rid)
        out[p] = rid
    return out


def _fmt_time(x: float) -> str:
    return f"{x:.3f}"


def write_kaldi_dir(utts: Iterable[Utterance], data_dir: str | Path) -> None:
    """Export to a Kaldi data folder (created if needed); see the module doc.

    Everything is checked before the first file is written, so bad ids leave the folder as it was.
    """
    utts = sorted(utts, key=lambda u: u.utt_id)
    seen: set[str] = set()
    for u in utts:
        _check_id("utt_id", u.utt_id)
        if u.speaker:
            _check_id(f"speaker of {u.utt_id}:", u.speaker)
        if "\n" in u.path or "\r" in u.path or u.path != u.path.strip() or u.path.endswith("|"):
            raise InputError(f"audio path of {u.utt_id} cannot be written to wav.scp", u.path)
        if u.utt_id in seen:
            raise InputError(f"duplicate utt_id {u.utt_id!r}")
        seen.add(u.utt_id)
    if not utts:
        raise InputError("no utterances to write to a Kaldi data folder", data_dir)
    segmented = any(u.start is not None or u.end is not None for u in utts)
    spk_of = {u.utt_id: u.speaker or u.utt_id for u in utts}

    files: dict[str, list[str]] = {}
    if segmented:
        rec = _recording_ids(u.path for u in utts)
        files["wav.scp"] = sorted(f"{rid} {p}" for p, rid in rec.items())
        files["segments"] = [
            f"{u.utt_id} {rec[u.path]} {_fmt_time(u.start or 0.0)} "
            f"{_fmt_time(u.end if u.end is not None else (u.start or 0.0) + u.duration)}"
            for u in utts
        ]
    else:
        files["wav.scp"] = [f"{u.utt_id} {u.path}" for u in utts]
    files["utt2spk"] = [f"{uid} {s}" for uid, s in spk_of.items()]
    by_spk: dict[str, list[str]] = defaultdict(list)
    for uid, s in spk_of.items():
        by_spk[s].append(uid)
    files["spk2utt"] = [f"{s} {' '.join(sorted(by_spk[s]))}" for s in sorted(by_spk)]

    d = Path(data_dir)
    if d.exists() and not d.is_dir():
        raise InputError("exists and is not a folder", d)
    d.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        atomic_write_text(d / name, "\n".join(lines) + "\n")
    if not segmented:
        (d / "segments").unlink(missing_ok=True)  # a stale one would re-cut the new wav.scp
