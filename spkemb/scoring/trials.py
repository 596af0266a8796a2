"""Score a trial list against an embedding store: id resolution, normalisation, cosine, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spkemb.data.trials import Trials
from spkemb.embeddings.store import EmbeddingSet
from spkemb.errors import InputError
from spkemb.scoring.backends import Normalizer, as_norm, cosine_scores, l2_normalize, resolve_ids
from spkemb.scoring.metrics import summarize

NORMS = ("none", "mean", "standardize", "asnorm")


@dataclass
class ScoredTrials:
    trials: Trials
    keep: np.ndarray              # bool per trial: its ids were found
    scores: np.ndarray            # one score per kept trial
    labels: np.ndarray | None     # labels of the kept trials
    missing: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> str:
        """``enroll test score [target|nontarget]`` lines in the trials' order (kept trials only)."""
        rows = np.flatnonzero(self.keep)
        values = [f"{s:.6f}" for s in self.scores.tolist()]
        e, t = self.trials.enroll, self.trials.test
        if self.labels is None:
            out = [f"{e[i]} {t[i]} {s}" for i, s in zip(rows, values, strict=True)]
        else:
            names = ("nontarget", "target")
            out = [f"{e[i]} {t[i]} {s} {names[lab]}"
                   for i, s, lab in zip(rows, values, self.labels.tolist(), strict=True)]
        return "\n".join(out) + "\n" if out else ""


def score_trials(
    trials: Trials,
    store: EmbeddingSet,
    *,
    norm: str = "none",
    cohort: EmbeddingSet | None = None,
    top_k: int = 300,
    skip_missing: bool = False,
    source: str | None = None,
) -> ScoredTrials:
    """Cosine-score ``trials``; ``mean``/``standardize`` normalise embeddings with the cohort (or the
    store itself when no cohort is given) before cosine; ``asnorm`` normalises scores against it."""
    if norm not in NORMS:
        raise InputError(f"unknown normalisation {norm!r} (choose {', '.join(NORMS)})")
    if norm == "asnorm" and cohort is None:
        raise InputError("--norm asnorm needs a cohort store (--cohort COHORT.h5)")
    enroll_idx, test_idx, keep, missing = resolve_ids(trials, store.index(), skip_missing, source=source)
    vectors = store.vectors
    coh = None if cohort is None else cohort.vectors
    if coh is not None and coh.shape[1] != vectors.shape[1]:
        raise InputError(f"cohort embeddings are {coh.shape[1]}-d but {source or 'the store'} holds "
                         f"{vectors.shape[1]}-d embeddings")
    if norm in ("mean", "standardize"):
        vectors = Normalizer.fit(coh if coh is not None else vectors, norm).apply(vectors)
    scores = cosine_scores(l2_normalize(vectors), enroll_idx, test_idx, normalized=True)
    if norm == "asnorm":
        scores = as_norm(scores, vectors, enroll_idx, test_idx, coh, top_k=top_k)
    labels = None if trials.labels is None else trials.labels[keep]
    summary: dict[str, Any] = {"eer": None, "eer_threshold": None, "mindcf_p0.01": None, "mindcf_p0.05": None,
                               "targets": None, "nontargets": None}
    if labels is not None:
        summary.update(summarize(scores, labels))
    summary.update({"trials": int(keep.sum()), "skipped": int(len(trials) - keep.sum()), "norm": norm})
    return ScoredTrials(trials, keep, scores, labels, list(missing), summary)
