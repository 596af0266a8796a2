"""Score a trial list against an embedding store (id resolution, back-end, normalisation), or take
the scores of an existing scores file; summarise either with the verification metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spkemb.data.trials import Trials, cut
from spkemb.embeddings.store import EmbeddingSet
from spkemb.errors import InputError
from spkemb.options import Options, opt
from spkemb.scoring.backends import Normalizer, ScoreSpace
from spkemb.scoring.defaults import DEFAULT_P_TARGETS
from spkemb.scoring.metrics import summarize
from spkemb.scoring.norm import DEFAULT_TOP_K, SCORE_NORMS, check_cohort, normalize_scores
from spkemb.scoring.plda import Plda
from spkemb.scoring.scores_io import TrialTable, format_scores, read_trial_table, resolve_rows, write_scores

BACKENDS = ("cosine", "plda")
EMBEDDING_NORMS = ("mean", "standardize")
NORMS = ("none", *EMBEDDING_NORMS, *SCORE_NORMS)


@dataclass(frozen=True)
class ScoreOptions(Options):
    """How trials are scored. The values are checked when the options are made (a ValueError naming
    the field; :meth:`~spkemb.options.Options.from_mapping` makes it an InputError); :meth:`check`
    checks them against the inputs a run has."""

    backend: str = opt("cosine", "cosine, or plda (needs a PLDA model)")
    norm: str = opt(
        "none",
        "none; mean / standardize act on the embeddings before the back-end; znorm, tnorm, snorm, asnorm on "
        "the scores (with a cohort)",
    )
    top_k: int | None = opt(None, f"asnorm: best cohort scores kept per embedding (None: {DEFAULT_TOP_K})")
    skip_missing: bool = opt(False, "drop trials whose ids are not in the store instead of failing")

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: unknown back-end {self.backend!r} (choose {', '.join(BACKENDS)})")
        if self.norm not in NORMS:
            raise ValueError(f"norm: unknown normalisation {self.norm!r} (choose {', '.join(NORMS)})")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"`top_k` must be at least 1, got {self.top_k}")
        if self.top_k is not None and self.norm != "asnorm":
            raise ValueError("`top_k` is for `norm` asnorm only")

    def check(self, have_cohort: bool, have_plda: bool) -> None:
        """Refuse options that the run's inputs cannot serve."""
        if self.norm in SCORE_NORMS and not have_cohort:
            raise InputError(f"`norm` {self.norm} needs a cohort store (`cohort` COHORT.h5)")
        if self.backend == "plda" and not have_plda:
            raise InputError("`backend` plda needs a model: `train` TRAIN.h5 or `plda` MODEL.npz")


@dataclass
class ScoredTrials:
    """Scores of the kept trials of a list, with their labels and what produced them."""

    table: TrialTable  # the scored trials, in list order
    scores: np.ndarray  # float64, one per trial of ``table``
    labels: np.ndarray | None  # int8, when the list is labelled
    total: int  # trials in the list, skipped ones included
    missing: list[str] = field(default_factory=list)
    system: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return self.total - len(self.table)

    def lines(self) -> str:
        """``enroll test score [target|nontarget]`` lines in the trials' order."""
        return bytes(format_scores(self.table, self.scores, self.labels)).decode()

    def columns(self) -> tuple[TrialTable, np.ndarray, np.ndarray | None]:
        """What :func:`~spkemb.scoring.scores_io.format_scores` takes."""
        return self.table, self.scores, self.labels

    def write(self, dest: str | Path | None) -> None:
        """Write the score lines to ``dest`` atomically (stdout for None or ``-``)."""
        write_scores(dest, self.table, self.scores, self.labels)

    def summary(self, p_targets: tuple[float, ...] = DEFAULT_P_TARGETS) -> dict[str, Any]:
        """Metrics (None when unlabelled), counts and the system description, for ``--json``."""
        out: dict[str, Any] = {
            "eer": None,
            "eer_threshold": None,
            "cllr": None,
            "mincllr": None,
            "targets": None,
            "nontargets": None,
        }
        for p in p_targets:
            out[f"mindcf_p{p:g}"] = out[f"actdcf_p{p:g}"] = None
        if self.labels is not None:
            out.update(summarize(self.scores, self.labels, p_targets))
        out.update({"trials": len(self.table), "skipped": self.skipped, **self.system})
        return out


def _check_finite_rows(
    vectors: np.ndarray, ids: list[str], used: tuple[np.ndarray, ...] | None, what: str, source: str | None
) -> None:
    """Name the first non-finite embedding among the rows ``used`` (all when None) by its id: its
    scores would be NaN, or (in a cohort) every normalised score would."""
    bad = ~np.isfinite(vectors).all(axis=1)
    if not bad.any():
        return
    if used is not None:
        mask = np.zeros_like(bad)
        for rows in used:
            mask[rows[bad[rows]]] = True
        bad = mask
    rows_bad = np.flatnonzero(bad)
    if len(rows_bad):
        row = int(rows_bad[0])
        raise InputError(
            f"the {what} of {ids[row]!r} (row {row + 1}) is not finite (NaN or infinite); "
            f"{len(rows_bad)} {'is' if len(rows_bad) == 1 else 'are'} used here",
            source,
        )


def _space(vectors: np.ndarray, backend: str, plda: Plda | None) -> ScoreSpace:
    return plda.space(vectors) if backend == "plda" and plda is not None else ScoreSpace.cosine(vectors)


def score_trials(
    trials: TrialTable | Trials,
    store: EmbeddingSet,
    options: ScoreOptions = ScoreOptions(),
    *,
    cohort: EmbeddingSet | None = None,
    plda: Plda | None = None,
    source: str | None = None,
    cohort_source: str | None = None,
) -> ScoredTrials:
    """Score ``trials`` with the embeddings of ``store``.

    ``mean``/``standardize`` normalise the embeddings with the cohort (or the store itself when no
    cohort is given) before the back-end; the score normalisations use the cohort scored with the
    same back-end (:mod:`spkemb.scoring.norm`). Raises InputError for unknown ids (unless
    ``skip_missing``), a cohort of another size and a PLDA model of another size.
    """
    options.check(cohort is not None, plda is not None)
    table = trials if isinstance(trials, TrialTable) else TrialTable.from_trials(trials)
    vectors = store.vectors
    coh = None if cohort is None else cohort.vectors
    if coh is not None and (coh.ndim != 2 or len(coh) == 0):
        raise InputError("the cohort store is empty", cohort_source)
    if coh is not None and coh.shape[1] != vectors.shape[1]:
        raise InputError(
            f"cohort embeddings are {coh.shape[1]}-d but {source or 'the store'} holds {vectors.shape[1]}-d embeddings",
            cohort_source,
        )
    if plda is not None and options.backend == "plda" and plda.dim != vectors.shape[1]:
        raise InputError(
            f"the PLDA model takes {plda.dim}-d embeddings but {source or 'the store'} holds "
            f"{vectors.shape[1]}-d embeddings"
        )
    enroll_idx, test_idx, keep, missing = resolve_rows(table, store.ids, options.skip_missing, source=source)
    _check_finite_rows(vectors, store.ids, (enroll_idx, test_idx), "embedding", source)
    if coh is not None and cohort is not None:
        _check_finite_rows(coh, cohort.ids, None, "cohort embedding", cohort_source)
    if options.norm in EMBEDDING_NORMS:
        normalizer = Normalizer.fit(coh if coh is not None else vectors, options.norm)
        vectors = normalizer.apply(vectors)
        coh = None if coh is None else normalizer.apply(coh)
    space = _space(vectors, options.backend, plda)
    scores = space.pairs(enroll_idx, test_idx)
    if options.norm in SCORE_NORMS and coh is not None:
        cohort_space = _space(coh, options.backend, plda)
        check_cohort(cohort_space, space, source=cohort_source)
        scores = normalize_scores(scores, space, enroll_idx, test_idx, cohort_space, options.norm, options.top_k)
    kept = table.take(keep)
    system: dict[str, Any] = {"backend": options.backend, "norm": options.norm, "calibrated": False}
    if options.norm == "asnorm":
        system["top_k"] = DEFAULT_TOP_K if options.top_k is None else options.top_k
    return ScoredTrials(kept, scores, kept.labels, len(table), list(missing), system)


def read_scores(path: str | Path, say: Callable[[str], None] | None = None) -> ScoredTrials:
    """An existing scores file (``enroll test score [target|nontarget]``) as a scored list. A trial
    that appears twice with both labels is refused; one that appears twice with one label is
    reported through ``say`` (each copy counts in the metrics)."""
    table = read_trial_table(path)
    if table.scores is None:
        raise InputError("not a scores file: expected 'enroll test score [target|nontarget]' lines", path)
    if np.isnan(table.scores).any():
        raise InputError(f"not a scores file: {int(np.isnan(table.scores).sum())} lines have no score", path)
    _check_repeats(table, path, say)
    return ScoredTrials(
        table, table.scores, table.labels, len(table), [], {"scores_file": str(path), "calibrated": False}
    )


def _check_repeats(table: TrialTable, path: str | Path, say: Callable[[str], None] | None) -> None:
    """Refuse trials listed with both labels; report trials listed more than once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    labels = np.zeros(len(table), dtype=np.int8) if table.labels is None else table.labels
    tab = pa.table({"e": table.enroll, "t": table.test, "l": pa.array(labels)})
    groups = tab.group_by(["e", "t"]).aggregate([("l", "min"), ("l", "max"), ("l", "count")])
    if groups.num_rows == tab.num_rows:
        return
    clash = groups.filter(pc.not_equal(groups["l_min"], groups["l_max"]))
    if clash.num_rows:
        e, t = clash["e"][0].as_py(), clash["t"][0].as_py()
        raise InputError(
            f"{clash.num_rows} trials are listed both as target and as non-target (e.g. {cut(e)} {cut(t)}); "
            "a scores file lists each trial once",
            path,
        )
    if say is not None:
        repeated = groups.filter(pc.greater(groups["l_count"], 1))
        e, t = repeated["e"][0].as_py(), repeated["t"][0].as_py()
        say(
            f"note: {path}: {tab.num_rows - groups.num_rows} lines repeat a trial listed before (e.g. "
            f"{cut(e)} {cut(t)}); each copy counts in the metrics"
        )
