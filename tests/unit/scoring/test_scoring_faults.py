"""Issue 21 (trust, round 3), the scoring items: forged PLDA and calibration files, non-finite and
exact scores, one run's outputs written all or none, and the smaller silences of `spkemb score`."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.embeddings.store import write_embeddings
from spkemb.errors import InputError
from spkemb.scoring.metrics import summarize
from spkemb.scoring.plda import Plda, PldaOptions
from spkemb.scoring.plots import PlotSystem, det_axes, histogram_figure
from spkemb.scoring.trial_scoring import ScoreOptions

runner = CliRunner()
DIM = 8


def _one_error_line(r) -> str:  # noqa: ANN001
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    """A labelled store of 6 speakers x 4 utterances, its trial list, and a PLDA model trained on it."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, DIM)) * 3
    ids, vecs = [], []
    for s in range(6):
        for u in range(4):
            ids.append(f"spk{s}/{u}.wav")
            vecs.append(centres[s] + rng.normal(size=DIM))
    emb = tmp_path / "emb.h5"
    write_embeddings(emb, ids, np.array(vecs, dtype=np.float32), speakers=[i.split("/")[0] for i in ids])
    lines = [
        f"{int(ids[i][:4] == ids[j][:4])} {ids[i]} {ids[j]}" for i in range(len(ids)) for j in range(i + 1, len(ids))
    ]
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(lines) + "\n")
    model = tmp_path / "model.npz"
    r = runner.invoke(app, ["score", str(trials), str(emb), "--backend", "plda", "--train", str(emb)])
    assert r.exit_code == 0, r.output
    Plda.fit(np.array(vecs), [i.split("/")[0] for i in ids], PldaOptions()).save(model)
    return {"emb": emb, "trials": trials, "model": model}


def _forge(src: Path, dest: Path, **replace: np.ndarray) -> Path:
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(replace)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    dest.write_bytes(buf.getvalue())
    return dest


# --- 13: a forged PLDA model -------------------------------------------------------------------------


def test_a_huge_forged_plda_array_is_refused_from_its_header(setup: dict[str, Path], tmp_path: Path) -> None:
    """A 4000 x 4000 `within` of deflated zeros (a small file, 128 MB in memory) is refused before it is read."""
    forged = tmp_path / "bomb.npz"
    with np.load(setup["model"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "within"}
    with zipfile.ZipFile(forged, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in arrays.items():
            with zf.open(f"{k}.npy", "w") as f:
                np.lib.format.write_array(f, v)
        with zf.open("within.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (4000, 4000)})
            zero = bytes(1 << 20)
            for _ in range(4000 * 4000 * 8 // len(zero)):
                f.write(zero)
    assert forged.stat().st_size < 1_000_000
    with pytest.raises(InputError, match="within has shape"):
        Plda.load(forged, dim=DIM)
    line = _one_error_line(
        runner.invoke(
            app, ["score", str(setup["trials"]), str(setup["emb"]), "--backend", "plda", "--plda", str(forged)]
        )
    )
    assert "bomb.npz" in line and "shape" in line


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("between", "negative", "between-speaker covariance is not positive definite"),
        ("within", "nan", "within holds non-finite values"),
        ("whiten", "int", "holds int64 values"),
        ("mu", "short", "mu has shape"),
        ("lda", "wide", "takes 9-d embeddings"),
        ("whiten", "zero", "has rank below"),  # every embedding maps to one point: all scores equal
        ("lda", "zero", "has rank below"),
        ("within", "huge", "between-speaker covariance is ~0 against"),
        ("between", "tiny", "between-speaker covariance is ~0 against"),
    ],
)
def test_forged_plda_values_are_refused(
    setup: dict[str, Path], tmp_path: Path, key: str, value: str, message: str
) -> None:
    with np.load(setup["model"], allow_pickle=False) as z:
        a = np.array(z[key])
        lda = np.array(z["lda"])
    forged = {
        "negative": lambda: -a,
        "nan": lambda: np.where(np.eye(len(a), dtype=bool), np.nan, a),
        "int": lambda: a.astype(np.int64),
        "short": lambda: a[:-1],
        "wide": lambda: np.vstack([lda, lda[:1]]),
        "zero": lambda: np.zeros_like(a),
        "huge": lambda: a * 1e300,
        "tiny": lambda: a * 1e-300,
    }[value]()
    path = _forge(setup["model"], tmp_path / "forged.npz", **{key: forged})
    line = _one_error_line(
        runner.invoke(app, ["score", str(setup["trials"]), str(setup["emb"]), "--backend", "plda", "--plda", str(path)])
    )
    assert message in line and "forged.npz" in line, line


def test_a_plda_model_that_is_no_archive_is_one_line(setup: dict[str, Path], tmp_path: Path) -> None:
    """A .npy array (np.load returns no archive: a TypeError traceback) or text (said to be pickled data)."""
    npy, text = tmp_path / "m.npy", tmp_path / "m.npz"
    np.save(npy, np.zeros(3))
    text.write_text("hello\n")
    for path, message in ((npy, "a .npy array"), (text, "not an .npz archive")):
        args = ["score", str(setup["trials"]), str(setup["emb"]), "--backend", "plda", "--plda", str(path)]
        line = _one_error_line(runner.invoke(app, args))
        assert message in line and path.name in line, line


def test_a_huge_forged_encoder_attribute_is_not_read(
    setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder attributes were read whole before their size was checked."""
    import spkemb.scoring.plda as plda

    monkeypatch.setattr(plda, "_ATTR_CHARS", 100)
    path = _forge(setup["model"], tmp_path / "f.npz", encoder_config=np.array("x" * 1000), format=np.array("x" * 10**6))
    with pytest.raises(InputError, match="without format"):
        Plda.load(path, dim=DIM)
    path = _forge(setup["model"], tmp_path / "g.npz", encoder_config=np.array("x" * 1000))
    assert "encoder_config" not in Plda.load(path, dim=DIM).encoder
    path = _forge(setup["model"], tmp_path / "h.npz", encoder_config=np.array('{"a": 1}'))
    assert Plda.load(path, dim=DIM).encoder["encoder_config"] == {"a": 1}


def test_a_saved_plda_model_still_loads(setup: dict[str, Path]) -> None:
    model = Plda.load(setup["model"], dim=DIM)
    assert model.dim == DIM


# --- 14 and 7: non-finite and exact scores ------------------------------------------------------------


def test_a_calibration_that_overflows_is_refused_naming_it(setup: dict[str, Path], tmp_path: Path) -> None:
    cal = tmp_path / "cal.json"
    r = runner.invoke(app, ["score", str(setup["trials"]), str(setup["emb"]), "--fit-calibration", str(cal)])
    assert r.exit_code == 0, r.output
    d = json.loads(cal.read_text())
    d["weights"]["score"], d["bias"] = 1e308, 1e308  # finite numbers whose sum overflows
    cal.write_text(json.dumps(d))
    out = tmp_path / "out.txt"
    out.write_text("old\n")
    line = _one_error_line(
        runner.invoke(
            app, ["score", str(setup["trials"]), str(setup["emb"]), "--calibration", str(cal), "-o", str(out)]
        )
    )
    assert "cal.json" in line and "not finite" in line and "on trial 3" in line, line
    assert out.read_text() == "old\n"


def test_huge_scores_in_a_scores_file_stay_finite(tmp_path: Path) -> None:
    src, out = tmp_path / "s.txt", tmp_path / "o.txt"
    src.write_text("a b 1e308 target\na c -1e308 nontarget\nb c 0.5 nontarget\n")
    r = runner.invoke(app, ["score", "--scores", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "inf" not in out.read_text()
    assert [line.split()[2] for line in out.read_text().splitlines()] == ["1e+308", "-1e+308", "0.5"]


def test_infinite_scores_name_the_file_and_row(tmp_path: Path) -> None:
    src = tmp_path / "s.txt"
    src.write_text("a b 0.5 target\na c inf nontarget\nb c 0.1 nontarget\n")
    line = _one_error_line(runner.invoke(app, ["score", "--scores", str(src)]))
    assert "s.txt" in line and "1 of 3 scores are not finite" in line and "trial 2" in line, line


def test_metrics_read_back_from_a_scores_file_equal_the_originals(tmp_path: Path) -> None:
    """Scores that differ in the 7th decimal: rounded to 6 decimals they tied and the EER moved."""
    rng = np.random.default_rng(3)
    n = 400
    labels = (np.arange(n) % 4 == 0).astype(np.int8)
    base = np.round(rng.normal(size=n) + labels, 3)
    scores = (base + rng.integers(0, 9, size=n) * 1e-7).astype(np.float32).astype(np.float64)
    ids = [f"u{i}" for i in range(n + 1)]
    emb_free = tmp_path / "orig.txt"
    emb_free.write_text(
        "".join(
            f"{ids[i]} {ids[i + 1]} {repr(float(s))} {'target' if lab else 'nontarget'}\n"
            for i, (s, lab) in enumerate(zip(scores, labels, strict=True))
        )
    )
    out = tmp_path / "copy.txt"
    r = runner.invoke(app, ["score", "--scores", str(emb_free), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    back = np.array([float(line.split()[2]) for line in out.read_text().splitlines()])
    assert back.tolist() == scores.tolist()
    assert summarize(back, labels) == summarize(scores, labels)


# --- 15: all outputs of a run, or none ----------------------------------------------------------------


@pytest.mark.parametrize("late", ["--det", "--save-plda", "--fit-calibration"])
def test_a_failed_late_output_leaves_the_old_output_untouched(
    setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, late: str
) -> None:
    import spkemb.utils.fileio as fileio

    old = tmp_path / "old.txt"
    old.write_text("the user's scores\n")
    target = tmp_path / {"--det": "det.png", "--save-plda": "m.npz", "--fit-calibration": "c.json"}[late]
    real_write = fileio.OutputGroup.write_bytes

    def write_bytes(self: fileio.OutputGroup, path: str | Path, data: bytes | memoryview) -> None:
        if Path(path).name == target.name:  # the disk fills up at the last output
            raise OSError(28, "No space left on device")
        real_write(self, path, data)

    monkeypatch.setattr(fileio.OutputGroup, "write_bytes", write_bytes)
    args = ["score", str(setup["trials"]), str(setup["emb"]), "-o", str(old), late, str(target)]
    if late == "--save-plda":
        args += ["--backend", "plda", "--train", str(setup["emb"])]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "No space left" in r.output, r.output
    assert old.read_text() == "the user's scores\n"
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_all_outputs_are_written_together(setup: dict[str, Path], tmp_path: Path) -> None:
    out, det, cal = tmp_path / "o.txt", tmp_path / "d.svg", tmp_path / "c.json"
    r = runner.invoke(
        app,
        ["score", str(setup["trials"]), str(setup["emb"]), "-o", str(out), "--det", str(det)]
        + ["--fit-calibration", str(cal)],
    )
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 0 and det.read_text().startswith("<?xml") and json.loads(cal.read_text())


# --- 16 and 18: messages, forged calibration, repeated trials, outputs ---------------------------------


def test_a_huge_unparseable_line_is_cut_in_the_message(tmp_path: Path, setup: dict[str, Path]) -> None:
    bad = tmp_path / "t.txt"
    bad.write_text("1 a b c " + "x" * 200_000 + "\n")
    line = _one_error_line(runner.invoke(app, ["score", str(bad), str(setup["emb"])]))
    assert "cannot parse" in line and len(line) < 400, len(line)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prior", 2.0, "prior 2.0"),
        ("prior", float("nan"), "prior is nan"),
        ("weights", {"score": "1.5"}, "not a number"),
    ],
)
def test_forged_calibration_files_are_refused(
    setup: dict[str, Path], tmp_path: Path, field: str, value: object, message: str
) -> None:
    cal = tmp_path / "cal.json"
    r = runner.invoke(app, ["score", str(setup["trials"]), str(setup["emb"]), "--fit-calibration", str(cal)])
    assert r.exit_code == 0, r.output
    d = json.loads(cal.read_text())
    d[field] = value
    cal.write_text(json.dumps(d))
    line = _one_error_line(
        runner.invoke(app, ["score", str(setup["trials"]), str(setup["emb"]), "--calibration", str(cal)])
    )
    assert "cal.json" in line and message in line, line


def test_contradictory_trials_are_refused_and_repeats_noted(tmp_path: Path) -> None:
    src = tmp_path / "s.txt"
    src.write_text("a b 0.5 target\na c 0.1 nontarget\na b 0.5 nontarget\n")
    line = _one_error_line(runner.invoke(app, ["score", "--scores", str(src)]))
    assert "both as target and as non-target" in line and "a b" in line, line
    src.write_text("a b 0.5 target\na c 0.1 nontarget\na b 0.5 target\n")
    r = runner.invoke(app, ["score", "--scores", str(src)])
    assert r.exit_code == 0 and "1 lines repeat a trial" in r.stderr, r.output


def test_a_cohort_of_identical_vectors_is_refused(setup: dict[str, Path], tmp_path: Path) -> None:
    cohort = tmp_path / "c.h5"
    write_embeddings(cohort, [f"c{i}" for i in range(10)], np.ones((10, DIM), dtype=np.float32))
    line = _one_error_line(
        runner.invoke(
            app, ["score", str(setup["trials"]), str(setup["emb"]), "--cohort", str(cohort), "--norm", "snorm"]
        )
    )
    assert "all the same vector" in line and "c.h5" in line, line


def test_plot_onto_a_folder_names_its_option(setup: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "plots.png"
    folder.mkdir()
    line = _one_error_line(runner.invoke(app, ["score", str(setup["trials"]), str(setup["emb"]), "--det", str(folder)]))
    assert "--det must name a file" in line, line


def test_scores_never_replace_an_hdf5_store(setup: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    write_embeddings(other, ["x"], np.zeros((1, DIM), dtype=np.float32))
    before = other.read_bytes()
    line = _one_error_line(runner.invoke(app, ["score", str(setup["trials"]), str(setup["emb"]), "-o", str(other)]))
    assert "HDF5" in line and "-o" in line, line
    assert other.read_bytes() == before


# --- 9: the plots say what they show ---------------------------------------------------------------------


def test_det_markers_at_the_edge_are_not_clipped_and_histogram_says_calibration() -> None:
    scores = np.array([3.0, 2.5, 2.0, -1.0, -1.5, -2.0, -2.5, -3.0])
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    ax = det_axes([PlotSystem("sys", scores, labels)])
    markers = [line for line in ax.lines if line.get_marker() in ("o", "s")]
    assert len(markers) == 2 and not any(m.get_clip_on() for m in markers)
    svg = histogram_figure([PlotSystem("sys", scores, labels, calibrated=False)], "svg").decode()
    assert "not calibrated" in svg
    svg = histogram_figure([PlotSystem("sys", scores, labels, calibrated=True)], "svg").decode()
    assert "log-likelihood ratios" in svg


# --- issue 17: the scoring options are Options with checks that name the field ---------------------------


def test_score_and_plda_options_check_their_fields() -> None:
    with pytest.raises(ValueError, match="top_k"):
        ScoreOptions(norm="asnorm", top_k=0)
    with pytest.raises(ValueError, match="norm"):
        ScoreOptions(norm="bogus")
    with pytest.raises(InputError, match="backend"):
        ScoreOptions.from_mapping({"backend": "svm"})
    with pytest.raises(ValueError, match="lda_dim"):
        PldaOptions(lda_dim=0)
    assert [d.name for d in ScoreOptions.describe()] == ["backend", "norm", "top_k", "skip_missing"]
