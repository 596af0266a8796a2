"""Trial lists: read the field's formats, write them, and generate new lists from a manifest.

Formats (auto-detected per file):

* VoxCeleb ``label enroll test`` with ``1`` = target, ``0`` = non-target (``veri_test2.txt``);
* Kaldi ``enroll test target|nontarget``;
* unlabelled ``enroll test``;
* a spkemb/Kaldi scores file ``enroll test score [target|nontarget]`` is also a trial list.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spkemb.data.manifest import Utterance, atomic_write_text
from spkemb.errors import InputError

_KALDI = {"target": 1, "nontarget": 0}


@dataclass
class Trials:
    """Parallel lists of enrolment and test ids, with labels (1 target, 0 non-target) when known."""

    enroll: list[str]
    test: list[str]
    labels: np.ndarray | None = None  # int8, same length

    def __len__(self) -> int:
        return len(self.enroll)

    @property
    def n_target(self) -> int:
        return 0 if self.labels is None else int(self.labels.sum())

    @property
    def n_nontarget(self) -> int:
        return 0 if self.labels is None else int(len(self.labels) - self.labels.sum())


def cut(text: str, limit: int = 80) -> str:
    """``text`` for a message: at most ``limit`` characters (a 200-MB line is not quoted whole)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_trials(path: str | Path) -> Trials:
    """Read a trial list (``-`` for stdin); a malformed line raises InputError with its number."""
    return parse_trial_lines(_read_lines(path), path)[0]


def _read_lines(path: str | Path) -> list[str]:
    if str(path) == "-":
        return sys.stdin.read().removeprefix("\ufeff").splitlines()  # (a UTF-8 byte-order mark, as some editors write)
    p = Path(path)
    if not p.is_file():
        raise InputError("no such trial list", path)
    try:
        return p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise InputError("not a text trial list (cannot decode as UTF-8)", path) from None


def parse_trial_lines(lines: Iterable[str], path: str | Path | None = None) -> tuple[Trials, np.ndarray | None]:
    """Parse the lines of a trial list or scores file; also return the score column (float64, NaN on
    lines without one) when any line has one, else None. Errors name ``path`` and the line number."""
    enroll: list[str] = []
    test: list[str] = []
    labels: list[int] = []
    scores: list[float] = []
    kind: str | None = None
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        this, label, e, t, score = _parse(fields)
        if this is None:
            raise InputError(
                f"line {lineno}: cannot parse trial {cut(line.strip())!r} "
                "(expected 'label enroll test', 'enroll test target|nontarget' or 'enroll test')",
                path,
            )
        if kind is None:
            kind = this
        elif (kind == "unlabelled") != (this == "unlabelled"):
            raise InputError(
                f"line {lineno}: {cut(line.strip())!r} has {len(fields)} fields, but the list started as {kind} trials",
                path,
            )
        enroll.append(e)
        test.append(t)
        scores.append(score)
        if label is not None:
            labels.append(label)
    if not enroll:
        raise InputError("trial list has no trials", path)
    arr = np.asarray(labels, dtype=np.int8) if kind != "unlabelled" else None
    score_arr = np.asarray(scores, dtype=np.float64)
    return Trials(enroll, test, arr), (None if np.isnan(score_arr).all() else score_arr)


def _parse(f: list[str]) -> tuple[str | None, int | None, str, str, float]:
    """``(kind, label, enroll, test, score)`` of one line's fields; kind None when unparseable."""
    n = len(f)
    nan = float("nan")
    if n == 3 and f[0] in ("0", "1"):
        return "voxceleb", int(f[0]), f[1], f[2], nan
    if n == 3 and f[2] in _KALDI:
        return "kaldi", _KALDI[f[2]], f[0], f[1], nan
    if n == 2:
        return "unlabelled", None, f[0], f[1], nan
    if n == 4 and f[3] in _KALDI and _is_float(f[2]):
        return "kaldi", _KALDI[f[3]], f[0], f[1], float(f[2])
    if n == 3 and _is_float(f[2]):
        return "unlabelled", None, f[0], f[1], float(f[2])
    return None, None, "", "", nan


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def format_trials(trials: Trials, fmt: str = "voxceleb") -> str:
    """``voxceleb`` (label enroll test) or ``kaldi`` (enroll test target|nontarget)."""
    if fmt not in ("voxceleb", "kaldi"):
        raise InputError(f"unknown trial format {fmt!r} (voxceleb or kaldi)")
    out = []
    for i, (e, t) in enumerate(zip(trials.enroll, trials.test, strict=True)):
        if any(c.isspace() for c in e + t):
            bad = e if any(c.isspace() for c in e) else t
            raise InputError(
                f"utt_id {bad!r} contains whitespace, which trial lists cannot hold "
                "(rename the files, or prepare with `speaker_regex` on a cleaner root)"
            )
        if trials.labels is None:
            out.append(f"{e} {t}")
        elif fmt == "voxceleb":
            out.append(f"{int(trials.labels[i])} {e} {t}")
        else:
            out.append(f"{e} {t} {'target' if trials.labels[i] else 'nontarget'}")
    return "\n".join(out) + "\n"


def write_trials(trials: Trials, path: str | Path, fmt: str = "voxceleb") -> None:
    text = format_trials(trials, fmt)
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(path, text)


def generate_trials(
    utts: Iterable[Utterance],
    n_target: int,
    n_nontarget: int,
    seed: int = 0,
    exclude_speakers: Iterable[str] = (),
) -> Trials:
    """Draw distinct target and non-target pairs (no self-pairs, no repeated pair) from labelled utterances.

    Speakers in ``exclude_speakers`` (e.g. a training manifest's) are left out, so the list is
    speaker-disjoint from training. Asking for more pairs than exist is an InputError.
    """
    excluded = set(exclude_speakers)
    by_spk: dict[str, list[str]] = defaultdict(list)
    for u in utts:
        if u.speaker and u.speaker not in excluded:
            by_spk[u.speaker].append(u.utt_id)
    spks = sorted(by_spk)
    if len(spks) < 2:
        raise InputError(f"need at least 2 labelled speakers to make trials, found {len(spks)}")
    ids = [i for s in spks for i in sorted(by_spk[s])]
    spk_of = np.array([k for k, s in enumerate(spks) for _ in by_spk[s]])
    n = len(ids)
    sizes = np.bincount(spk_of)
    max_target = int((sizes * (sizes - 1) // 2).sum())
    max_non = n * (n - 1) // 2 - max_target
    if n_target > max_target or n_nontarget > max_non:
        raise InputError(
            f"asked for {n_target} target / {n_nontarget} non-target trials, but these "
            f"utterances allow at most {max_target} / {max_non}"
        )
    rng = np.random.default_rng(seed)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    targets = _draw_targets(sizes, starts, n_target, max_target, rng)
    nontargets = _draw_nontargets(spk_of, n_nontarget, max_non, rng)
    rows = [(i, j, 1) for i, j in sorted(targets)] + [(i, j, 0) for i, j in sorted(nontargets)]
    order = rng.permutation(len(rows))
    rows = [rows[k] for k in order]
    return Trials(
        enroll=[ids[i] for i, _, _ in rows],
        test=[ids[j] for _, j, _ in rows],
        labels=np.array([lab for _, _, lab in rows], dtype=np.int8),
    )


def _draw_nontargets(spk_of: np.ndarray, want: int, total: int, rng: np.random.Generator) -> set[tuple[int, int]]:
    """Distinct cross-speaker pairs (i < j): vectorised rejection sampling, or full enumeration when
    the request is a large part of all pairs (only then is enumeration both needed and small)."""
    n = len(spk_of)
    if want > total // 2:
        i, j = np.triu_indices(n, k=1)
        cross = spk_of[i] != spk_of[j]
        i, j = i[cross], j[cross]
        pick = rng.choice(len(i), size=want, replace=False)
        return set(zip(i[pick].tolist(), j[pick].tolist(), strict=True))
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < want:
        m = 2 * (want - len(chosen)) + 16
        a, b = rng.integers(n, size=m), rng.integers(n, size=m)
        ok = spk_of[a] != spk_of[b]
        for x, y in zip(np.minimum(a, b)[ok].tolist(), np.maximum(a, b)[ok].tolist(), strict=True):
            if len(chosen) >= want:
                break
            chosen.add((x, y))
    return chosen


def _draw_targets(
    sizes: np.ndarray, starts: np.ndarray, want: int, total: int, rng: np.random.Generator
) -> set[tuple[int, int]]:
    """Distinct same-speaker pairs, uniform over all of them: a speaker drawn in proportion to its
    pair count, then two of its utterances. Enumerates only when the request is most of the pairs
    (so memory stays O(request), not O(sum of squared speaker sizes))."""
    if want > total // 2:
        pairs = [
            (a, b)
            for s in range(len(sizes))
            for a in range(starts[s], starts[s + 1])
            for b in range(a + 1, starts[s + 1])
        ]
        return {pairs[k] for k in rng.choice(len(pairs), size=want, replace=False)}
    weights = sizes * (sizes - 1) / 2
    weights = weights / weights.sum()
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < want:
        m = 2 * (want - len(chosen)) + 16
        spk = rng.choice(len(sizes), size=m, p=weights)
        a = rng.integers(0, sizes[spk])
        b = rng.integers(0, sizes[spk] - 1)
        b = b + (b >= a)
        i, j = starts[spk] + np.minimum(a, b), starts[spk] + np.maximum(a, b)
        for pair in zip(i.tolist(), j.tolist(), strict=True):
            if len(chosen) >= want:
                break
            chosen.add(pair)
    return chosen
