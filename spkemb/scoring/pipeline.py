"""What ``spkemb score`` does, as one core function: check the request, read every input, score (or
take existing scores), calibrate, summarise, render plots, and only then write the outputs.

Systems: the *primary* system is the one scored from ``TRIALS EMB.h5``, or, without them, the
first ``--scores`` file; ``-o``, ``--calibration`` and ``--fit-calibration`` act on it. Every
other ``--scores`` file is a system to compare: its metrics are reported and it is drawn on the
same plots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spkemb.errors import InputError
from spkemb.scoring.calibration import QUALITY_MEASURES, Calibration, duration_features
from spkemb.scoring.defaults import DEFAULT_P_TARGETS
from spkemb.scoring.norm import DEFAULT_TOP_K
from spkemb.scoring.plda import ENCODER_KEYS, Plda
from spkemb.scoring.trial_scoring import ScoredTrials, ScoreOptions, read_scores, score_trials

__all__ = ["ScoreRequest", "ScoreResult", "run_score"]


@dataclass
class ScoreRequest:
    """Everything ``spkemb score`` was asked (paths as given; None when absent)."""

    trials: str | None = None
    embeddings: str | None = None
    scores_files: list[str] = field(default_factory=list)
    output: str | None = None
    options: ScoreOptions = ScoreOptions()
    cohort: str | None = None
    train: str | None = None
    plda: str | None = None
    save_plda: str | None = None
    lda_dim: int | None = None
    calibration: str | None = None
    fit_calibration: str | None = None
    quality: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    p_targets: tuple[float, ...] = DEFAULT_P_TARGETS
    det: str | None = None
    hist: str | None = None
    names: list[str] = field(default_factory=list)  # legend names in system order; defaults for the rest
    json_out: bool = False
    allow_mixed_encoders: bool = False


@dataclass
class ScoreResult:
    systems: list[tuple[str, dict[str, Any]]]  # (name, summary) per system, the primary first


def _check_request(r: ScoreRequest) -> None:
    _check_inputs(r)
    _check_backend(r)
    _check_calibration(r)
    if r.json_out and r.output == "-":
        raise InputError("`json_out` prints the summary on stdout; give -o FILE for the scores")
    for p in r.p_targets:
        if not 0.0 < p < 1.0:
            raise InputError(f"`p_targets` must be strictly between 0 and 1, got {p}")
    _check_outputs(r)


def _check_inputs(r: ScoreRequest) -> None:
    computed = r.embeddings is not None
    n_systems = int(computed) + len(r.scores_files)
    if len(r.names) > n_systems:
        raise InputError(f"{len(r.names)} `names` options for {n_systems} systems")
    if r.trials is not None and not computed:
        raise InputError(
            "EMB.h5 is missing: give TRIALS EMB.h5 to score, or `scores_files` FILE for the metrics of an "
            "existing scores file"
        )
    if not computed and not r.scores_files:
        raise InputError("nothing to score: give TRIALS EMB.h5, or `scores_files` FILE")
    needs_emb = {
        "`cohort`": r.cohort,
        "`train`": r.train,
        "`plda`": r.plda,
        "`save_plda`": r.save_plda,
        "`lda_dim`": r.lda_dim,
    }
    for opt, value in needs_emb.items():
        if value is not None and not computed:
            raise InputError(f"{opt} needs TRIALS EMB.h5 (the scores of a `scores_files` file are taken as they are)")
    if not computed and (r.options.norm != "none" or r.options.backend != "cosine"):
        raise InputError(
            "`norm` and `backend` need TRIALS EMB.h5 (the scores of a `scores_files` file are taken as they are)"
        )


def _check_backend(r: ScoreRequest) -> None:
    if r.cohort is not None and r.options.norm == "none":
        raise InputError("`cohort` has no effect without `norm`")
    if r.train is not None and r.plda is not None:
        raise InputError("give `train` TRAIN.h5 (to train a PLDA model) or `plda` MODEL.npz (a trained one), not both")
    if (r.train is not None or r.plda is not None) and r.options.backend != "plda":
        raise InputError("`train` and `plda` are for `backend` plda")
    if r.save_plda is not None and r.train is None:
        raise InputError("`save_plda` saves the model that `train` trains")
    if r.lda_dim is not None and r.train is None:
        raise InputError("`lda_dim` is a training option (with `train`)")
    r.options.check(r.cohort is not None, r.train is not None or r.plda is not None)


def _check_calibration(r: ScoreRequest) -> None:
    if r.calibration is not None and r.fit_calibration is not None:
        raise InputError("give `calibration` (apply) or `fit_calibration` (fit), not both")
    for q in r.quality:
        if q not in QUALITY_MEASURES:
            raise InputError(f"unknown quality measure {q!r} (choose {', '.join(QUALITY_MEASURES)})")
    if r.quality and r.calibration is None and r.fit_calibration is None:
        raise InputError("`quality` feeds calibration: use it with `fit_calibration` or `calibration`")
    if "duration" in r.quality and not r.manifests:
        raise InputError("`quality` duration needs `manifests` FILE (the durations of the trial ids)")
    if r.manifests and "duration" not in r.quality:
        raise InputError("`manifests` is read for `quality` duration only")


def _check_outputs(r: ScoreRequest) -> None:
    from spkemb.scoring.plots import check_plot_path
    from spkemb.utils.fileio import refuse_output_onto_inputs, same_file

    inputs: dict[str, str | Path | None] = {
        "trial list": r.trials,
        "embedding store": r.embeddings,
        "cohort": r.cohort,
        "PLDA training store": r.train,
        "PLDA model": r.plda,
        "calibration": r.calibration,
        **{f"scores file {i + 1}": f for i, f in enumerate(r.scores_files)},
        **{f"manifest {i + 1}": m for i, m in enumerate(r.manifests)},
    }
    outputs = {
        "-o": r.output,
        "`fit_calibration`": r.fit_calibration,
        "`save_plda`": r.save_plda,
        "`det`": r.det,
        "`hist`": r.hist,
    }
    given = [(opt, p) for opt, p in outputs.items() if p is not None and p != "-"]
    for opt, p in given:
        refuse_output_onto_inputs(p, inputs, option=opt)
        if _is_hdf5(p):
            raise InputError(
                f"{opt} names an existing HDF5 file (an embedding store?), which score never replaces; choose "
                f"another {opt}",
                p,
            )
    for i, (opt_a, a) in enumerate(given):
        for opt_b, b in given[i + 1 :]:
            if same_file(a, b):
                raise InputError(f"{opt_a} and {opt_b} name the same file", a)
    for plot in (r.det, r.hist):
        if plot is not None:
            check_plot_path(plot)
    if r.save_plda is not None and Path(r.save_plda).suffix.lower() != ".npz":
        raise InputError("a PLDA model is saved as .npz (plain arrays, no pickle)", r.save_plda)


def _is_hdf5(path: str | Path) -> bool:
    """Whether ``path`` is an existing HDF5 file (its signature at offset 0, where h5py writes it)."""
    if not Path(path).is_file():  # (a FIFO would block the read)
        return False
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def _durations(r: ScoreRequest, st: ScoredTrials) -> dict[str, np.ndarray]:
    """The quality features the request names, for the primary system's trials."""
    if "duration" not in r.quality:
        return {}
    import pyarrow as pa
    import pyarrow.compute as pc

    from spkemb.data.manifest import read_manifest

    ids: list[str] = []
    secs: list[float] = []
    for m in r.manifests:
        for u in read_manifest(m):
            ids.append(u.utt_id)
            secs.append(u.duration)
    value_set, seconds = pa.array(ids, pa.string()), np.asarray(secs + [np.nan])

    def lookup(col: Any) -> np.ndarray:
        rows = np.asarray(pc.fill_null(pc.index_in(col, value_set=value_set), -1).to_numpy(zero_copy_only=False))
        return np.asarray(seconds[rows])

    d_e, d_t = lookup(st.table.enroll), lookup(st.table.test)
    lost = int(np.isnan(d_e).sum() + np.isnan(d_t).sum())
    if lost:
        raise InputError(f"{lost} trial ids have no duration in the manifest(s) (`quality` duration)", r.manifests[0])
    return {"duration": duration_features(d_e, d_t)}


def _same_encoder(store: Any, other: dict[str, Any], path: str | None, what: str, r: ScoreRequest) -> None:
    """Refuse a cohort, PLDA training store or PLDA model (``other``: its encoder attributes) that comes
    from another encoder than the scored store; a side without an attribute is not compared on it."""
    if r.allow_mixed_encoders or path is None:
        return
    for key in ENCODER_KEYS:
        mine, theirs = store.attrs.get(key), other.get(key)
        if mine and theirs and mine != theirs:
            raise InputError(
                f"this {what} comes from another encoder than {r.embeddings} ({key} differs); scores "
                "across encoders mean nothing (`allow_mixed_encoders` if you mean it)",
                path,
            )


def _primary(r: ScoreRequest, say: Callable[[str], None]) -> tuple[ScoredTrials, Plda | None]:
    """The primary system's scores, and the PLDA model when this run trains one."""
    from spkemb.embeddings.store import read_embeddings
    from spkemb.scoring.plda import PldaOptions
    from spkemb.scoring.scores_io import read_trial_table

    if r.embeddings is None:
        return read_scores(r.scores_files[0], say), None
    table = read_trial_table(r.trials or "-")
    store = read_embeddings(r.embeddings)
    cohort = read_embeddings(r.cohort) if r.cohort is not None else None
    if cohort is not None:
        _same_encoder(store, cohort.attrs, r.cohort, "cohort", r)
    plda = None
    if r.train is not None:
        train = read_embeddings(r.train)
        _same_encoder(store, train.attrs, r.train, "PLDA training store", r)
        plda = Plda.fit(train.vectors, train.speakers, PldaOptions(lda_dim=r.lda_dim), source=r.train)
        plda.encoder = {k: train.attrs[k] for k in ENCODER_KEYS if train.attrs.get(k)}
    elif r.plda is not None:
        plda = Plda.load(r.plda, dim=int(store.vectors.shape[1]) if store.vectors.ndim == 2 else None)
        _same_encoder(store, plda.encoder, r.plda, "PLDA model", r)
    st = score_trials(table, store, r.options, cohort=cohort, plda=plda, source=r.embeddings, cohort_source=r.cohort)
    if cohort is not None and r.options.norm == "asnorm":
        given = r.options.top_k
        top_k = DEFAULT_TOP_K if given is None else given
        if top_k > len(cohort.ids):
            what = f"the default `top_k` {top_k}" if given is None else f"`top_k` {top_k}"
            say(f"note: {what} exceeds the cohort's {len(cohort.ids)} embeddings; all of them are used")
    return st, plda


def _calibrate(r: ScoreRequest, st: ScoredTrials, say: Callable[[str], None]) -> Calibration | None:
    """Fit a calibration on ``st`` (returned, to be saved) or apply one to it (in place)."""
    system = {k: v for k, v in st.system.items() if k in ("backend", "norm", "top_k", "scores_file")}
    if r.fit_calibration is not None:
        if st.labels is None:
            raise InputError("`fit_calibration` needs a labelled trial list", r.trials or r.scores_files[0])
        quality = _durations(r, st)
        cal = Calibration.fit(st.scores, st.labels, quality, source=r.trials or r.scores_files[0])
        from spkemb.scoring.metrics import compute_cllr

        before, after = compute_cllr(st.scores, st.labels), compute_cllr(cal.apply(st.scores, quality), st.labels)
        cal.system = system
        cal.fitted_on = {
            "trials": len(st.table),
            "targets": int(st.labels.sum()),
            "cllr_before": before,
            "cllr_after": after,
        }
        say(f"calibration fitted on {len(st.table)} trials: Cllr {before:.3f} -> {after:.3f} bits")
        return cal
    if r.calibration is not None:
        cal = Calibration.load(r.calibration)
        for key in ("backend", "norm"):
            if key in cal.system and key in system and cal.system[key] != system[key]:
                raise InputError(
                    f"the calibration was fitted on {key} {cal.system[key]!r} scores, these are {system[key]!r}",
                    r.calibration,
                )
        st.scores = cal.apply(st.scores, _durations(r, st))
        st.system["calibrated"] = True
    return None


def _default_name(r: ScoreRequest, path: str | None = None) -> str:
    if path is not None:
        return Path(path).name
    o = r.options
    return f"{Path(r.embeddings or '').stem} {o.backend}" + ("" if o.norm == "none" else f" {o.norm}")


def _source(r: ScoreRequest, st: ScoredTrials) -> tuple[str, str | None]:
    """What made a system's scores, for a message: the words and the file to name."""
    if "scores_file" in st.system and not st.system.get("calibrated"):
        return "the scores file", str(st.system["scores_file"])
    made = [f"{st.system.get('backend', 'cosine')} scores of {r.embeddings}"] if r.embeddings else []
    if r.plda is not None:
        made.append(f"PLDA model {r.plda}")
    elif r.train is not None:
        made.append(f"the PLDA model trained on {r.train}")
    if st.system.get("calibrated") and r.calibration is not None:
        return ", ".join(made) + ", after this calibration", r.calibration
    return ", ".join(made), r.embeddings


def _check_systems(r: ScoreRequest, systems: list[tuple[str, ScoredTrials]]) -> None:
    """Refuse now what the metrics, plots and the scores writer would refuse later, so that nothing
    after this can."""
    from spkemb.scoring.metrics import check_scores
    from spkemb.scoring.scores_io import check_finite

    for name, st in systems:
        what, source = _source(r, st)
        check_finite(st.scores, f"{name} ({what})", source)
        if st.labels is not None:
            check_scores(st.scores, st.labels)
        elif r.det is not None or r.hist is not None:
            raise InputError(f"plots need labelled trials; {name} has no labels")


def _calibrated(st: ScoredTrials) -> bool | None:
    """Whether a system's scores are calibrated: known for scores made (or calibrated) by this run."""
    if st.system.get("calibrated"):
        return True
    return None if "scores_file" in st.system else False


def _plots(r: ScoreRequest, systems: list[tuple[str, ScoredTrials]]) -> list[tuple[str, bytes]]:
    if r.det is None and r.hist is None:
        return []
    from spkemb.scoring.plots import PlotSystem, check_plot_path, det_figure, histogram_figure

    plot_systems = [
        PlotSystem(name, st.scores, st.labels, _calibrated(st)) for name, st in systems if st.labels is not None
    ]
    out = []
    if r.det is not None:
        out.append((r.det, det_figure(plot_systems, check_plot_path(r.det), p_target=r.p_targets[0])))
    if r.hist is not None:
        out.append((r.hist, histogram_figure(plot_systems, check_plot_path(r.hist))))
    return out


def run_score(r: ScoreRequest, say: Callable[[str], None] = lambda _m: None) -> ScoreResult:
    """Do the whole command; every input error is raised before anything is written, and the files
    of one run (-o, --fit-calibration, --save-plda, --det, --hist) are all written or none is."""
    from concurrent.futures import ThreadPoolExecutor

    from spkemb.scoring.scores_io import format_scores
    from spkemb.utils.fileio import OutputGroup

    _check_request(r)
    primary, plda = _primary(r, say)
    if primary.skipped:
        say(
            f"skipped {primary.skipped} of {primary.total} trials: {len(primary.missing)} ids are not in {r.embeddings}"
        )
    cal = _calibrate(r, primary, say)
    extra = r.scores_files if r.embeddings else r.scores_files[1:]
    systems = [(_default_name(r, None if r.embeddings else r.scores_files[0]), primary)]
    systems += [(_default_name(r, f), read_scores(f, say)) for f in extra]
    systems = [(r.names[i] if i < len(r.names) else name, st) for i, (name, st) in enumerate(systems)]
    _check_systems(r, systems)
    to_file = r.output is not None and r.output != "-"
    to_stdout = not to_file and (r.output is not None or (r.embeddings is not None and not r.json_out))
    with OutputGroup() as out:
        # Every input is read and accepted: the scores are formatted and staged (Arrow's writer and the
        # disk, off the GIL) while the metrics and plots are computed; nothing replaces an existing
        # output until every output of the run is written.
        with ThreadPoolExecutor(1) as pool:
            writing = None
            if to_file:
                writing = pool.submit(lambda: out.write_bytes(str(r.output), format_scores(*primary.columns())))
            elif to_stdout:
                writing = pool.submit(primary.write, None)
            summaries = [(name, {"name": name, **st.summary(r.p_targets)}) for name, st in systems]
            plots = _plots(r, systems)
            if writing is not None:
                writing.result()
        if cal is not None:
            summaries[0][1]["calibration"] = {"file": r.fit_calibration, **cal.fitted_on}
            if r.fit_calibration is not None:
                out.write_text(r.fit_calibration, cal.to_json())
        if plda is not None and r.save_plda is not None:
            out.write_bytes(r.save_plda, plda.to_bytes())
        for path, data in plots:
            out.write_bytes(path, data)
    return ScoreResult(summaries)
