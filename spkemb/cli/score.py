"""`spkemb score`: score a trial list against an embedding store and report EER / minDCF."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from spkemb.cli.common import console, guarded, print_json


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
    from spkemb.scoring.trials import score_trials

    if cohort is not None and norm is Norm.none:
        raise InputError("--cohort has no effect without --norm mean|standardize|asnorm")
    if norm is Norm.asnorm and cohort is None:
        raise InputError("--norm asnorm needs a cohort store (--cohort COHORT.h5)")
    to_stdout = output is None or output == "-"
    if json_out and output == "-":
        raise InputError("--json prints the summary on stdout; give -o FILE for the scores")

    result = score_trials(read_trials(trials), read_embeddings(embeddings), norm=norm.value,
                          cohort=read_embeddings(cohort) if cohort is not None else None, top_k=top_k,
                          skip_missing=skip_missing, source=str(embeddings))
    summary = {**result.summary, "output": None if to_stdout else output}
    if summary["skipped"]:
        console.print(f"skipped {summary['skipped']} of {len(result.trials)} trials: {len(result.missing)} ids "
                      f"are not in {embeddings}", highlight=False, soft_wrap=True)
    if not to_stdout:
        atomic_write_text(output, result.lines())
    elif not json_out:
        sys.stdout.write(result.lines())
        sys.stdout.flush()
    if result.labels is not None:
        console.print(
            f"[bold]EER[/] {summary['eer']:.3f}%  [bold]minDCF[/](0.01) {summary['mindcf_p0.01']:.4f}  "
            f"[bold]minDCF[/](0.05) {summary['mindcf_p0.05']:.4f}  "
            f"({summary['targets']} target / {summary['nontargets']} non-target trials, norm {norm.value})",
            highlight=False, soft_wrap=True,
        )
    if json_out:
        print_json(summary)
