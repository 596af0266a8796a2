"""Label files: one ``utt_id label`` pair per line, like Kaldi's ``utt2spk``.

Format: two whitespace-separated fields per line, the utterance id (an ``utt_id`` of the manifest
and the embedding store) and its label (a speaker or a pseudo-speaker such as ``spk00042``); no
header; blank lines and lines starting with ``#`` are skipped. ``spkemb cluster`` writes these
files and ``spkemb finetune --labels`` reads them. Neither field may contain whitespace, and an
``utt_id`` appears at most once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from spkemb.errors import InputError
from spkemb.utils.fileio import atomic_write_text


def read_labels(path: str | Path) -> dict[str, str]:
    """``{utt_id: label}`` in file order; ``-`` reads stdin.

    A line that is not ``utt_id label``, a repeated ``utt_id`` or a file without labels raises
    :class:`InputError` naming the file and the line.
    """
    if str(path) == "-":
        text = sys.stdin.read()
    else:
        p = Path(path)
        if not p.is_file():
            raise InputError("no such label file", path)
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError("not a text label file (cannot decode as UTF-8)", path) from None
    labels: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            shown = line.strip() if len(line.strip()) <= 80 else line.strip()[:77] + "..."
            raise InputError(f"line {lineno}: expected 'utt_id label', got {len(fields)} fields ({shown!r})", path)
        utt, label = fields
        if utt in labels:
            raise InputError(f"line {lineno}: utt_id {utt!r} appears again (first on line {first_line[utt]})", path)
        labels[utt] = label
        first_line[utt] = lineno
    if not labels:
        raise InputError("label file has no 'utt_id label' lines", path)
    return labels


def format_labels(ids: Sequence[str], labels: Sequence[str]) -> str:
    """The file's text: ``utt_id label`` lines in the order given."""
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    out = []
    for utt, label in zip(ids, labels, strict=True):
        for what, value in (("utt_id", utt), ("label", label)):
            if not value or any(c.isspace() for c in value):
                raise InputError(f"{what} {value!r} is empty or contains whitespace, which a label file cannot hold")
        out.append(f"{utt} {label}\n")
    return "".join(out)


def write_labels(path: str | Path, ids: Sequence[str], labels: Sequence[str]) -> Path:
    """Write a label file atomically (checked completely before anything is written)."""
    return atomic_write_text(path, format_labels(ids, labels))
