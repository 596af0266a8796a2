"""Trial lists and scores files at memory speed: read with pyarrow's CSV reader, write with its CSV writer.

A :class:`TrialTable` holds the ids as Arrow string arrays (never a million Python strings), the
labels and, for a scores file, the score column. A clean file (single spaces, ASCII, no comments,
one format throughout) is parsed by pyarrow in C++; anything else falls back to the line parser of
:mod:`spkemb.data.trials`, which accepts every layout the project reads (tabs, runs of blanks,
``#`` comments, mixed VoxCeleb/Kaldi lines) and names the line of a malformed one. Both paths give
the same table.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spkemb.data.trials import Trials, parse_trial_lines
from spkemb.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["TrialTable", "check_finite", "read_trial_table", "resolve_rows", "format_scores", "write_scores"]

_LABEL_NAMES = ("nontarget", "target")
# Bytes that make pyarrow's single-space split differ from str.split() (or start a comment).
_SLOW_BYTES = (b"\t", b"\r", b"\x0b", b"\x0c", b"#")
_HINT_DROP = 4  # leading folders tried off either side's ids to explain a missing trial id
_HINT_SAMPLE = 100  # missing ids that vote for a common prefix


@dataclass
class TrialTable:
    """Trials as Arrow string arrays: ``enroll``, ``test``; ``labels`` (int8, 1 target) when known;
    ``scores`` (float64) when the file was a scores file (``enroll test score [target|nontarget]``)."""

    enroll: pa.Array | pa.ChunkedArray
    test: pa.Array | pa.ChunkedArray
    labels: np.ndarray | None = None
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.enroll)

    @classmethod
    def from_trials(cls, trials: Trials, scores: np.ndarray | None = None) -> TrialTable:
        import pyarrow as pa

        return cls(pa.array(trials.enroll, pa.string()), pa.array(trials.test, pa.string()), trials.labels, scores)

    def to_trials(self) -> Trials:
        return Trials(self.enroll.to_pylist(), self.test.to_pylist(), self.labels)

    def take(self, mask: np.ndarray) -> TrialTable:
        """The trials where the boolean ``mask`` is true, in order."""
        import pyarrow as pa

        if mask.all():
            return self
        m = pa.array(mask)
        return TrialTable(
            self.enroll.filter(m),
            self.test.filter(m),
            None if self.labels is None else self.labels[mask],
            None if self.scores is None else self.scores[mask],
        )


def _pool() -> Any:
    """The C library's allocator for the big buffers. Arrow's default (mimalloc) hands freed pages
    back at once, so a 1M-trial run spent 0.7 s of system time in page faults (0.25 s with this)."""
    import pyarrow as pa

    return pa.system_memory_pool()


def _read_bytes(path: str | Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    p = Path(path)
    if not p.is_file():
        raise InputError("no such trial list", path)
    return p.read_bytes()


def read_trial_table(path: str | Path) -> TrialTable:
    """Read a trial list or scores file (``-`` for stdin) in any format of :mod:`spkemb.data.trials`."""
    data = _read_bytes(path).removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as some editors write
    table = _fast_table(data)
    if table is not None:
        return table
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("not a text trial list (cannot decode as UTF-8)", path) from None
    trials, scores = parse_trial_lines(text.splitlines(), path)
    return TrialTable.from_trials(trials, scores)


def _fast_table(data: bytes) -> TrialTable | None:
    """Parse a clean file with pyarrow; None when the file needs the line parser (or is malformed)."""
    if not data.isascii() or any(b in data for b in _SLOW_BYTES):
        return None
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    try:
        tab = pcsv.read_csv(
            pa.py_buffer(data),
            read_options=pcsv.ReadOptions(autogenerate_column_names=True),
            parse_options=pcsv.ParseOptions(delimiter=" ", quote_char=False, double_quote=False, escape_char=False),
            convert_options=pcsv.ConvertOptions(
                column_types={f"f{i}": pa.string() for i in range(5)}, strings_can_be_null=False
            ),
            memory_pool=_pool(),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    cols = tab.columns  # chunked arrays: every compute function and the writer take them as they are
    if not 2 <= len(cols) <= 4 or any(pc.min(pc.binary_length(c)).as_py() == 0 for c in cols):
        return None  # a leading, trailing or doubled blank: the line parser decides

    def only(col: pa.ChunkedArray, values: tuple[str, ...]) -> bool:
        return bool(pc.all(pc.is_in(col, value_set=pa.array(values))).as_py())

    def floats(col: pa.ChunkedArray) -> np.ndarray | None:
        try:
            return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None

    def is_target(col: pa.ChunkedArray, word: str) -> np.ndarray:
        return np.asarray(pc.equal(col, word).to_numpy(zero_copy_only=False), dtype=np.int8)

    if len(cols) == 2:
        return TrialTable(cols[0], cols[1])
    if len(cols) == 3 and only(cols[0], ("0", "1")):
        return TrialTable(cols[1], cols[2], is_target(cols[0], "1"))
    if len(cols) == 3 and only(cols[2], _LABEL_NAMES):
        return TrialTable(cols[0], cols[1], is_target(cols[2], "target"))
    scores = floats(cols[2])
    if scores is None:
        return None
    if len(cols) == 3:
        return TrialTable(cols[0], cols[1], None, scores)
    if only(cols[3], _LABEL_NAMES):
        return TrialTable(cols[0], cols[1], is_target(cols[3], "target"), scores)
    return None


def _drop(u: str, n: int) -> str | None:
    """``u`` without its ``n`` leading folders; None when it has no more than ``n`` folders."""
    parts = u.split("/", n)
    return parts[n] if len(parts) > n and parts[n] else None


def _prefix_votes(missing: list[str], ids: list[str]) -> tuple[Counter[tuple[str, str]], dict[tuple[str, str], str]]:
    """``(side, prefix)`` -> how many ``missing`` ids it explains, and one of them: side ``trial`` when
    the trial id is ``prefix + store id``, ``store`` when a store id is ``prefix + trial id``. Tries
    1..:data:`_HINT_DROP` leading folders off each side; a suffix that store ids share behind different
    prefixes explains nothing."""
    known = set(ids)
    votes: Counter[tuple[str, str]] = Counter()
    example: dict[tuple[str, str], str] = {}

    def vote(key: tuple[str, str], u: str) -> None:
        votes[key] += 1
        example.setdefault(key, u)

    left = []
    for u in missing:
        rests = (_drop(u, n) for n in range(1, _HINT_DROP + 1))
        rest = next((r for r in rests if r is None or r in known), None)
        if rest is None:
            left.append(u)
        else:
            vote(("trial", u[: len(u) - len(rest)]), u)
    for n in range(1, _HINT_DROP + 1):
        if not left:
            break
        index: dict[str, str] = {}  # suffix -> the prefix before it; "" when store ids differ there
        for v in ids:
            rest = _drop(v, n)
            if rest is not None:
                prefix = v[: len(v) - len(rest)]
                if index.setdefault(rest, prefix) != prefix:
                    index[rest] = ""
        if not index:
            break
        for u in left:
            if index.get(u):
                vote(("store", index[u]), u)
        left = [u for u in left if not index.get(u)]
    return votes, example


def id_hint(missing: list[str], ids: list[str]) -> str:
    """Why the ``missing`` trial ids may not be among a store's ``ids``: a prefix that one side's ids
    carry and the other's lack (with the fix), or else a store id to compare with."""
    if not ids:
        return "the store is empty"
    sample = missing[:_HINT_SAMPLE]
    votes, example = _prefix_votes(sample, ids)
    if votes:
        (side, prefix), count = votes.most_common(1)[0]
        if 2 * count >= len(sample):  # a prefix common to (at least) half the missing ids
            u, folder = example[side, prefix], prefix.strip("/")
            if side == "trial":
                return (
                    f"the trial ids carry the prefix {prefix!r} that the store's ids lack ({u!r} is "
                    f"{u[len(prefix) :]!r} there): strip it from the trial list, or prepare the audio with "
                    f"--id-prefix {folder} (and extract again)"
                )
            return (
                f"the store's ids carry the prefix {prefix!r} that the trial ids lack ({u!r} is {prefix + u!r} "
                f"there): prepare the folder ROOT/{folder} instead of ROOT (and extract again), or put "
                f"{prefix!r} before the trial list's ids"
            )
    tail = missing[0].split("/")[-1]
    near = next((u for u in ids if u.endswith("/" + tail) or u == tail), ids[0])
    return (
        f"no prefix common to the missing ids explains them; store ids look like {near!r} (use `skip_missing` "
        "to score the trials that are there)"
    )


def resolve_rows(
    table: TrialTable,
    ids: list[str],
    skip_missing: bool = False,
    source: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Map the trials' ids to rows of ``ids`` (a store's utt_ids), as
    :func:`spkemb.scoring.backends.resolve_ids` does for a :class:`~spkemb.data.trials.Trials`:
    ``(enroll_idx, test_idx, keep_mask, missing)`` with a hash lookup in Arrow instead of a dict."""
    import pyarrow as pa
    import pyarrow.compute as pc

    value_set = pa.array(ids, pa.string())

    def rows(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
        found = pc.index_in(col, value_set=value_set)
        return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)

    enroll, test = rows(table.enroll), rows(table.test)
    keep = (enroll >= 0) & (test >= 0)
    missing: list[str] = []
    if not keep.all():
        known = set(ids)
        bad = pa.array(np.flatnonzero(~keep))
        seen: set[str] = set()
        for e, t in zip(table.enroll.take(bad).to_pylist(), table.test.take(bad).to_pylist(), strict=True):
            for u in (e, t):
                if u not in known and u not in seen:
                    seen.add(u)
                    missing.append(u)
        if not skip_missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            noun = "trial id is" if len(missing) == 1 else "trial ids are"
            raise InputError(
                f"{len(missing)} {noun} not in the embedding store: {shown}; {id_hint(missing, ids)}", source
            )
        if not keep.any():
            raise InputError(
                f"none of the {len(table)} trials has both ids in the embedding store "
                f"({len(missing)} ids missing, e.g. {missing[0]})",
                source,
            )
    return enroll[keep], test[keep], keep, missing


def format_scores(table: TrialTable, scores: np.ndarray, labels: np.ndarray | None) -> bytes | memoryview:
    """``enroll test score [target|nontarget]`` lines, each score in the shortest form that reads back
    as the same float64 (Arrow's writer, as ``repr``), so that the metrics of a scores file equal those
    of the scores it was written from. (Rounded to 6 decimals, a test-other run's EER moved from 6.178 %
    to 6.162 %: the rounding made ties.) Non-finite scores raise InputError: a file of ``inf`` is no
    scores file."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    s = np.asarray(scores, dtype=np.float64) + 0.0  # + 0.0 turns -0.0 into 0.0
    check_finite(s, "cannot write scores")
    cols: dict[str, Any] = {"e": table.enroll, "t": table.test, "s": pa.array(s)}
    if labels is not None:
        cols["l"] = pa.DictionaryArray.from_arrays(pa.array(np.asarray(labels, dtype=np.int8)), pa.array(_LABEL_NAMES))
    sink = pa.BufferOutputStream(memory_pool=_pool())
    try:
        pcsv.write_csv(
            pa.table(cols),
            sink,
            memory_pool=_pool(),
            write_options=pcsv.WriteOptions(include_header=False, quoting_style="none", delimiter=" "),
        )
    except pa.ArrowInvalid:  # an id with a quote character: Arrow will not write it unquoted
        return _format_slowly(table, s, labels).encode()
    return memoryview(sink.getvalue())  # Arrow's buffer as it is: no copy of the (tens of MB of) text


def check_finite(scores: np.ndarray, what: str, source: str | Path | None = None) -> None:
    """Raise InputError naming the first non-finite score's row (1-based) and how many there are."""
    bad = ~np.isfinite(np.asarray(scores, dtype=np.float64))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        value = float(np.asarray(scores, dtype=np.float64)[first])
        raise InputError(
            f"{what}: {int(bad.sum())} of {bad.size} scores are not finite (NaN or infinite; the first is "
            f"{value} on trial {first + 1})",
            source,
        )


def _format_slowly(table: TrialTable, scores: np.ndarray, labels: np.ndarray | None) -> str:
    e, t = table.enroll.to_pylist(), table.test.to_pylist()
    values = [repr(float(x)) for x in scores.tolist()]
    if labels is None:
        out = [f"{a} {b} {s}" for a, b, s in zip(e, t, values, strict=True)]
    else:
        out = [f"{a} {b} {s} {_LABEL_NAMES[lab]}" for a, b, s, lab in zip(e, t, values, labels.tolist(), strict=True)]
    return "\n".join(out) + "\n" if out else ""


def write_scores(dest: str | Path | None, table: TrialTable, scores: np.ndarray, labels: np.ndarray | None) -> None:
    """Write score lines to ``dest`` atomically, or to stdout when ``dest`` is None or ``-``."""
    data = format_scores(table, scores, labels)
    if dest is None or str(dest) == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        from spkemb.utils.fileio import atomic_write_bytes

        atomic_write_bytes(dest, data)
