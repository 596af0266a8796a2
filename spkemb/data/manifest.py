"""The manifest: one TSV row per utterance (or segment), with a header.

Columns: ``utt_id  path  speaker  duration  sample_rate`` and optionally ``start  end`` (seconds)
for segments of a longer file. ``utt_id`` is the path relative to the prepared root, extension
included, the way VoxCeleb trial lists name files. ``path`` is absolute, or relative to the
manifest's own folder. ``speaker`` may be empty for unlabelled data.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from spkemb.errors import InputError
from spkemb.utils.fileio import atomic_write_text

COLUMNS = ("utt_id", "path", "speaker", "duration", "sample_rate")
SEGMENT_COLUMNS = ("start", "end")


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    path: str
    speaker: str
    duration: float
    sample_rate: int
    start: float | None = None
    end: float | None = None

    def with_speaker(self, speaker: str) -> Utterance:
        return replace(self, speaker=speaker)


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read a manifest (``-`` for stdin). Relative audio paths resolve against its folder."""
    if str(path) == "-":
        text, base = sys.stdin.read().removeprefix("\ufeff"), Path.cwd()
    else:
        p = Path(path)
        if not p.is_file():
            raise InputError("no such manifest file", path)
        try:
            text, base = p.read_text(encoding="utf-8-sig"), p.resolve().parent
        except UnicodeDecodeError:
            raise InputError("not a manifest (not UTF-8 text; arguments swapped?)", path) from None
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    except csv.Error as err:
        raise InputError(f"not a manifest TSV ({err})", path) from None
    rows = [r for r in rows if r and not (len(r) == 1 and not r[0].strip())]
    if not rows:
        raise InputError("empty manifest (no header)", path)
    header = [h.strip() for h in rows[0]]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise InputError(f"manifest header lacks column(s) {', '.join(missing)}", path)
    col = {name: i for i, name in enumerate(header)}
    out: list[Utterance] = []
    seen: set[str] = set()
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) < len(header):
            raise InputError(f"line {lineno}: expected {len(header)} tab-separated fields, got {len(row)}", path)
        try:
            start = row[col["start"]] if "start" in col else ""
            end = row[col["end"]] if "end" in col else ""
            utt = Utterance(
                utt_id=row[col["utt_id"]],
                path=_resolve(row[col["path"]], base),
                speaker=row[col["speaker"]],
                duration=float(row[col["duration"]]),
                sample_rate=int(row[col["sample_rate"]]),
                start=float(start) if start else None,
                end=float(end) if end else None,
            )
        except ValueError as err:
            raise InputError(f"line {lineno}: {err}", path) from None
        problem = _bad_numbers(utt)
        if problem:
            raise InputError(f"line {lineno}: {problem}", path)
        if utt.utt_id in seen:
            raise InputError(f"line {lineno}: duplicate utt_id {utt.utt_id!r}", path)
        seen.add(utt.utt_id)
        out.append(utt)
    return out


def _bad_numbers(u: Utterance) -> str | None:
    """What is wrong with an utterance's numbers (NaN, infinite or negative times, a rate below 1)."""
    for name, value in (("duration", u.duration), ("start", u.start), ("end", u.end)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            return f"{name} {value!r} is not a number of seconds >= 0"
    if u.sample_rate < 1:
        return f"sample_rate {u.sample_rate} is not a positive number of Hz"
    if u.start is not None and u.end is not None and u.end < u.start:
        return f"end {u.end!r} is before start {u.start!r}"
    return None


def _resolve(p: str, base: Path) -> str:
    return p if os.path.isabs(p) else str(base / p)


def format_manifest(utts: Iterable[Utterance]) -> str:
    utts = list(utts)
    segments = any(u.start is not None or u.end is not None for u in utts)
    header = COLUMNS + (SEGMENT_COLUMNS if segments else ())
    lines = ["\t".join(header)]
    for u in utts:
        fields = [u.utt_id, u.path, u.speaker, f"{u.duration:.3f}", str(u.sample_rate)]
        if segments:
            fields += ["" if u.start is None else f"{u.start:.3f}", "" if u.end is None else f"{u.end:.3f}"]
        for f in fields:
            if "\t" in f or "\n" in f:
                raise InputError(f"field {f!r} contains a tab or newline and cannot be written to a manifest")
        lines.append("\t".join(fields))
    return "\n".join(lines) + "\n"


def write_manifest(utts: Iterable[Utterance], path: str | Path) -> None:
    """Write a manifest atomically (``-`` for stdout): a failed run never leaves half a file."""
    text = format_manifest(utts)
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write_text(path, text)


def speakers_of(utts: Iterable[Utterance]) -> list[str]:
    """Sorted distinct non-empty speaker labels."""
    return sorted({u.speaker for u in utts if u.speaker})
