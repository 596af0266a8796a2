"""`spkemb score`: score trials (cosine or PLDA, normalised, calibrated) or read scores files; report
EER, minDCF, actDCF, Cllr; draw DET curves and score histograms."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from spkemb.cli.common import console, guarded, print_json
from spkemb.cli.params import shown
from spkemb.scoring.defaults import DEFAULT_P_TARGETS, DEFAULT_TOP_K


class Norm(StrEnum):
    none = "none"
    mean = "mean"
    standardize = "standardize"
    znorm = "znorm"
    tnorm = "tnorm"
    snorm = "snorm"
    asnorm = "asnorm"


class Backend(StrEnum):
    cosine = "cosine"
    plda = "plda"


class Quality(StrEnum):
    duration = "duration"


_EMB = "Embedding store"


@guarded
def score(
    trials: str | None = typer.Argument(
        None,
        metavar="TRIALS",
        help="Trial list: 'label enroll test' (VoxCeleb), "
        "'enroll test target|nontarget' (Kaldi) or 'enroll test'; '-' for stdin.",
    ),
    embeddings: Path | None = typer.Argument(
        None, metavar="EMB.h5", help="Embedding store whose utt_ids the trial ids name."
    ),
    output: str | None = typer.Option(
        None, "-o", "--output", metavar="FILE", help="Write scores here (atomically) instead of stdout; '-' for stdout."
    ),
    scores_files: list[str] | None = typer.Option(
        None,
        "--scores",
        metavar="FILE",
        help="An existing scores file "
        "('enroll test score [target|nontarget]', e.g. from another "
        "toolkit): its metrics, and a curve on the plots. Repeatable. "
        "Without TRIALS EMB.h5 the first one is the system that -o and "
        "calibration act on.",
        rich_help_panel="Scores in",
    ),
    names: list[str] | None = typer.Option(
        None,
        "--name",
        metavar="NAME",
        help="Legend name of a system, in "
        "order: this run's system first, then each --scores file. Repeatable "
        "[default: the store name and back-end, or the scores file's name].",
        rich_help_panel="Scores in",
    ),
    backend: Backend = typer.Option(
        Backend.cosine, "--backend", help="cosine, or plda (needs --train or --plda).", rich_help_panel="Back-end"
    ),
    norm: Norm = typer.Option(
        Norm.none,
        "--norm",
        help="none; mean / standardize: subtract the cohort mean (and "
        "divide by its std) before the back-end; znorm / tnorm / snorm: normalise scores by "
        "the enrolment's / test's / both sides' scores against the cohort; asnorm: snorm "
        "over each side's --top-k best cohort scores.",
        rich_help_panel="Back-end",
    ),
    cohort: Path | None = typer.Option(
        None,
        "--cohort",
        metavar="COHORT.h5",
        help="Cohort store for --norm (e.g. "
        "training-set embeddings). mean/standardize fall back to EMB.h5 itself; the "
        "score norms need one.",
        rich_help_panel="Back-end",
    ),
    top_k: int | None = typer.Option(
        None,
        "--top-k",
        help=f"asnorm: best cohort scores kept per embedding {shown(DEFAULT_TOP_K)}.",
        rich_help_panel="Back-end",
    ),
    train: Path | None = typer.Option(
        None,
        "--train",
        metavar="TRAIN.h5",
        help="Train the PLDA back-end on this labelled store (LDA, length norm, two-covariance PLDA).",
        rich_help_panel="Back-end",
    ),
    plda: Path | None = typer.Option(
        None, "--plda", metavar="MODEL.npz", help="A PLDA model saved by --save-plda.", rich_help_panel="Back-end"
    ),
    save_plda: Path | None = typer.Option(
        None,
        "--save-plda",
        metavar="MODEL.npz",
        help="Save the PLDA model that --train trains.",
        rich_help_panel="Back-end",
    ),
    lda_dim: int | None = typer.Option(
        None,
        "--lda-dim",
        min=1,
        help="PLDA training: LDA dimension [default: the embedding size, or one less than the speakers where fewer].",
        rich_help_panel="Back-end",
    ),
    calibration: Path | None = typer.Option(
        None,
        "--calibration",
        metavar="CAL.json",
        help="Apply this calibration: scores become log-likelihood ratios.",
        rich_help_panel="Calibration",
    ),
    fit_calibration: Path | None = typer.Option(
        None,
        "--fit-calibration",
        metavar="CAL.json",
        help="Fit a "
        "linear logistic-regression calibration on these (development) "
        "trials and save it (the scores written and reported here stay "
        "uncalibrated).",
        rich_help_panel="Calibration",
    ),
    quality: list[Quality] | None = typer.Option(
        None,
        "--quality",
        help="Quality measures for the calibration "
        "(WeSpeaker's QMF): duration = log of the shorter and longer "
        "utterance's duration (needs --manifest).",
        rich_help_panel="Calibration",
    ),
    manifests: list[Path] | None = typer.Option(
        None,
        "--manifest",
        metavar="MANIFEST.tsv",
        help="Manifest(s) with the durations of the trial ids. Repeatable.",
        rich_help_panel="Calibration",
    ),
    p_targets: list[float] | None = typer.Option(
        None,
        "--p-target",
        metavar="P",
        help="DCF operating point(s): minDCF and actDCF at each. Repeatable "
        f"{shown(' and '.join(map(str, DEFAULT_P_TARGETS)))}.",
        rich_help_panel="Report",
    ),
    det: Path | None = typer.Option(
        None,
        "--det",
        metavar="FILE.png|.svg|.pdf",
        help="Draw the DET curve(s) (EER and minDCF at the first --p-target marked).",
        rich_help_panel="Report",
    ),
    hist: Path | None = typer.Option(
        None,
        "--hist",
        metavar="FILE.png|.svg|.pdf",
        help="Draw target / non-target score histograms.",
        rich_help_panel="Report",
    ),
    skip_missing: bool = typer.Option(
        False, "--skip-missing", help="Drop trials whose ids are not in the store instead of failing."
    ),
    allow_mixed_encoders: bool = typer.Option(
        False,
        "--allow-mixed-encoders",
        help="Accept a cohort, PLDA "
        "training store or PLDA model made by another encoder than EMB.h5 "
        "(refused by default: their scores do not mix).",
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print one JSON summary on stdout; scores then go only to -o.", rich_help_panel="Report"
    ),
) -> None:
    """Score TRIALS with the embeddings in EMB.h5, or report on existing scores files (--scores).

    Scores are 'enroll test score' lines, with a fourth column target|nontarget when the trials are
    labelled (so a scores file is itself a labelled trial list). With labels, EER, minDCF, actDCF
    (which reads the scores as natural-log LLRs), Cllr and minCllr are reported on stderr. Without
    TRIALS EMB.h5, --scores FILE gives the metrics of an existing scores file; its scores are
    written only with -o (e.g. calibrated with --calibration). Several --scores files draw as
    several systems on one --det plot. Nothing is written when an input is bad, and a failed run
    leaves an existing -o untouched.
    """
    from spkemb.scoring.pipeline import ScoreRequest, run_score
    from spkemb.scoring.trial_scoring import ScoreOptions

    def s(p: Path | None) -> str | None:
        return None if p is None else str(p)

    request = ScoreRequest(
        trials=trials,
        embeddings=s(embeddings),
        scores_files=list(scores_files or []),
        output=output,
        options=ScoreOptions.from_mapping(
            {"backend": backend.value, "norm": norm.value, "top_k": top_k, "skip_missing": skip_missing}
        ),
        cohort=s(cohort),
        train=s(train),
        plda=s(plda),
        save_plda=s(save_plda),
        lda_dim=lda_dim,
        calibration=s(calibration),
        fit_calibration=s(fit_calibration),
        quality=[q.value for q in quality or []],
        manifests=[str(m) for m in manifests or []],
        p_targets=tuple(p_targets or (0.01, 0.05)),
        det=s(det),
        hist=s(hist),
        names=list(names or []),
        json_out=json_out,
        allow_mixed_encoders=allow_mixed_encoders,
    )
    from spkemb.cli.errors import flag_text
    from spkemb.cli.params import command_flags

    flags = command_flags(score)  # the core's notes name option fields (`top_k`): shown as score's flags
    result = run_score(request, lambda m: console.print(flag_text(m, flags), highlight=False, soft_wrap=True))
    for sys_name, summary in result.systems:
        _print_metrics(sys_name, summary, request.p_targets)
    if json_out:
        first = dict(result.systems[0][1])
        first["output"] = output if output not in (None, "-") else None
        if len(result.systems) > 1:
            first["systems"] = [summary for _, summary in result.systems]
        print_json(first)


def _print_metrics(name: str, s: dict[str, Any], p_targets: tuple[float, ...]) -> None:
    if s["eer"] is None:
        return
    dcf = "  ".join(
        f"[bold]minDCF[/]({p:g}) {s[f'mindcf_p{p:g}']:.4f}  [bold]actDCF[/]({p:g}) {s[f'actdcf_p{p:g}']:.4f}"
        for p in p_targets
    )
    console.print(
        f"{name}: [bold]EER[/] {s['eer']:.3f}%  {dcf}  [bold]Cllr[/] {s['cllr']:.3f}  [bold]minCllr[/] "
        f"{s['mincllr']:.3f}  ({s['targets']} target / {s['nontargets']} non-target trials)",
        highlight=False,
        soft_wrap=True,
    )
