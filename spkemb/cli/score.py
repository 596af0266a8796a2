"""`spkemb score`: score a trial list against an embedding store and report EER / minDCF."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from spkemb.cli.common import console, guarded, print_json

if TYPE_CHECKING:
    import numpy as np

    from spkemb.data.trials import Trials


class Norm(StrEnum):
    none = "none"
    mean = "mean"
    standardize = "standardize"
    asnorm = "asnorm"


@guarded
def score(
    trials: str = typer.Argument(..., metavar="TRIALS", help="Trial list: 'label enroll test' (VoxCeleb), 'enroll test "
                                 "target|nontarget' (Kaldi) or 'enroll test'; '-' for stdin."),
    embeddings: Path = typer.Argument(..., metavar="EMB.h5", help="Embedding store whose utt_ids the trial "
                                      "ids name."),
    output: str | None = typer.Option(None, "-o", "--output", help="Write scores here (atomically) instead "
                                      "of stdout; '-' for stdout."),
    cohort: Path | None = typer.Option(None, "--cohort", metavar="COHORT.h5", help="Cohort store for --norm "
                                       "(e.g. training-set embeddings). mean/standardize fall back to EMB.h5 "
                                       "itself; asnorm needs one."),
    norm: Norm = typer.Option(Norm.none, "--norm", help="none: plain cosine; mean / standardize: subtract "
                              "the cohort mean (and divide by its std) before cosine; asnorm: adaptive "
                              "symmetric score normalisation against the cohort."),
    top_k: int = typer.Option(300, "--top-k", min=1, help="AS-norm: cohort scores kept per embedding."),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="Drop trials whose ids are not in the "
                                      "store instead of failing."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary on stdout; scores then go "
                                  "only to -o."),
) -> None:
    """Cosine-score TRIALS with the embeddings in EMB.h5.

    Scores are 'enroll test score' lines, with a fourth column target|nontarget when the trials are
    labelled (so a scores file is itself a labelled trial list). With labels, EER and minDCF
    (p_target 0.01 and 0.05) are reported on stderr. A failed run leaves an existing -o untouched.
    """
    import sys

    from spkemb.data.manifest import atomic_write_text
    from spkemb.data.trials import read_trials
    from spkemb.embeddings.store import read_embeddings
    from spkemb.errors import InputError
    from spkemb.scoring.backends import Normalizer, as_norm, cosine_scores, l2_normalize, resolve_ids
    from spkemb.scoring.metrics import summarize

    if cohort is not None and norm is Norm.none:
        raise InputError("--cohort has no effect without --norm mean|standardize|asnorm")
    if norm is Norm.asnorm and cohort is None:
        raise InputError("--norm asnorm needs a cohort store (--cohort COHORT.h5)")
    to_stdout = output is None or output == "-"
    if json_out and output == "-":
        raise InputError("--json prints the summary on stdout; give -o FILE for the scores")

    tr = read_trials(trials)
    store = read_embeddings(embeddings)
    enroll_idx, test_idx, keep, missing = resolve_ids(tr, store.index(), skip_missing, source=embeddings)
    n_skipped = int(len(tr) - keep.sum())
    if n_skipped:
        console.print(f"skipped {n_skipped} of {len(tr)} trials: {len(missing)} ids are not in {embeddings}",
                      highlight=False, soft_wrap=True)

    vectors = store.vectors
    coh = None
    if cohort is not None:
        coh = read_embeddings(cohort).vectors
        if coh.shape[1] != vectors.shape[1]:
            raise InputError(f"cohort embeddings are {coh.shape[1]}-d but {embeddings} holds "
                             f"{vectors.shape[1]}-d embeddings", cohort)
    if norm in (Norm.mean, Norm.standardize):
        normalizer = Normalizer.fit(coh if coh is not None else vectors, norm.value)
        vectors = normalizer.apply(vectors)
    unit = l2_normalize(vectors)
    scores = cosine_scores(unit, enroll_idx, test_idx, normalized=True)
    if norm is Norm.asnorm:
        assert coh is not None
        scores = as_norm(scores, vectors, enroll_idx, test_idx, coh, top_k=top_k)

    labels = None if tr.labels is None else tr.labels[keep]
    summary: dict[str, object] = {
        "eer": None, "eer_threshold": None, "mindcf_p0.01": None, "mindcf_p0.05": None,
        "targets": None, "nontargets": None,
    }
    if labels is not None:
        summary.update(summarize(scores, labels))
    summary.update({"trials": int(keep.sum()), "skipped": n_skipped, "norm": norm.value,
                    "output": None if to_stdout else output})

    if not to_stdout:
        atomic_write_text(output, _format_scores(tr, keep, scores, labels))
    elif not json_out:
        sys.stdout.write(_format_scores(tr, keep, scores, labels))
        sys.stdout.flush()

    if labels is not None:
        console.print(
            f"[bold]EER[/] {summary['eer']:.3f}%  [bold]minDCF[/](0.01) {summary['mindcf_p0.01']:.4f}  "
            f"[bold]minDCF[/](0.05) {summary['mindcf_p0.05']:.4f}  "
            f"({summary['targets']} target / {summary['nontargets']} non-target trials, norm {norm.value})",
            highlight=False, soft_wrap=True,
        )
    if json_out:
        print_json(summary)


def _format_scores(tr: Trials, keep: np.ndarray, scores: np.ndarray, labels: np.ndarray | None) -> str:
    """Scores as text lines, the trials' ids in their order (kept trials only)."""
    import numpy as np  # noqa: F811 (lazy import keeps `spkemb --help` fast)

    rows = np.flatnonzero(keep)
    enroll = [tr.enroll[i] for i in rows]
    test = [tr.test[i] for i in rows]
    values = [f"{s:.6f}" for s in scores.tolist()]
    if labels is None:
        lines = [f"{e} {t} {s}" for e, t, s in zip(enroll, test, values, strict=True)]
    else:
        names = ("nontarget", "target")
        lines = [f"{e} {t} {s} {names[lab]}" for e, t, s, lab in
                 zip(enroll, test, values, labels.tolist(), strict=True)]
    return "\n".join(lines) + "\n" if lines else ""
