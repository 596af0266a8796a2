"""Linear logistic calibration: it turns miscalibrated scores into LLRs (Cllr down to about minCllr,
EER unchanged), quality measures help where quality matters, and its JSON file round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.embeddings.store import write_embeddings
from spkemb.errors import InputError
from spkemb.scoring.calibration import Calibration, duration_features
from spkemb.scoring.metrics import compute_cllr, compute_eer, compute_min_cllr

runner = CliRunner()


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian LLRs (targets N(+2, 2), non-targets N(-2, 2): calibrated), then squashed and shifted."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.2).astype(np.int8)
    llr = rng.normal(np.where(labels == 1, 2.0, -2.0), 2.0)
    return 0.1 * llr + 0.5, labels


def test_calibration_lowers_cllr_and_keeps_eer() -> None:
    dev_s, dev_l = _miscalibrated(4000, 0)
    eval_s, eval_l = _miscalibrated(4000, 1)
    cal = Calibration.fit(dev_s, dev_l)
    llr = cal.apply(eval_s)
    before, after = compute_cllr(eval_s, eval_l), compute_cllr(llr, eval_l)
    assert before > 0.9 and after < 0.6 * before
    assert after == pytest.approx(compute_min_cllr(eval_s, eval_l), abs=0.02)  # nearly all calibration loss gone
    assert compute_eer(llr, eval_l)[0] == pytest.approx(compute_eer(eval_s, eval_l)[0])
    # The generating model is llr = 10 * (s - 0.5): the fit finds it.
    assert cal.weights["score"] == pytest.approx(10.0, rel=0.1) and cal.bias == pytest.approx(-5.0, abs=0.5)


def test_prior_weighting_gives_the_same_llr() -> None:
    s, lab = _miscalibrated(4000, 2)
    a, b = Calibration.fit(s, lab, prior=0.5), Calibration.fit(s, lab, prior=0.1)
    assert b.weights["score"] == pytest.approx(a.weights["score"], rel=0.1)
    assert b.bias == pytest.approx(a.bias, abs=0.3)


def test_duration_quality_measure_helps_when_quality_varies() -> None:
    """Longer utterances score higher whatever the class (as cosine does); a calibration that knows
    the durations takes that offset off, one that does not cannot."""
    rng = np.random.default_rng(3)
    n = 6000
    labels = (rng.random(n) < 0.2).astype(np.int8)
    d_e, d_t = rng.uniform(1, 20, size=n), rng.uniform(1, 20, size=n)
    llr = rng.normal(np.where(labels == 1, 2.0, -2.0), 2.0)
    scores = 0.1 * llr + 0.3 * np.log(np.minimum(d_e, d_t))
    q = {"duration": duration_features(d_e, d_t)}
    plain = Calibration.fit(scores[:3000], labels[:3000])
    qmf = Calibration.fit(scores[:3000], labels[:3000], {k: v[:3000] for k, v in q.items()})
    assert set(qmf.weights) == {"score", "log_min_duration", "log_max_duration"}
    ev = slice(3000, None)
    c_plain = compute_cllr(plain.apply(scores[ev]), labels[ev])
    c_qmf = compute_cllr(qmf.apply(scores[ev], {k: v[ev] for k, v in q.items()}), labels[ev])
    assert c_qmf < c_plain - 0.05
    with pytest.raises(InputError, match="`quality` duration"):
        qmf.apply(scores)


def test_one_class_and_non_finite_sets_are_refused() -> None:
    with pytest.raises(InputError, match="0 non-target"):
        Calibration.fit(np.array([0.1, 0.2, 0.3]), np.array([1, 1, 1]))
    with pytest.raises(InputError, match="0 target"):
        Calibration.fit(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(InputError, match="non-finite"):
        Calibration.fit(np.array([0.1, np.nan]), np.array([1, 0]))


def test_json_round_trip_and_malformed_files(tmp_path: Path) -> None:
    s, lab = _miscalibrated(500, 4)
    cal = Calibration.fit(s, lab)
    cal.save(tmp_path / "cal.json")
    back = Calibration.load(tmp_path / "cal.json")
    np.testing.assert_allclose(back.apply(s), cal.apply(s))
    assert json.loads((tmp_path / "cal.json").read_text())["format"] == "spkemb-calibration"
    (tmp_path / "bad.json").write_text('{"format": "spkemb-calibration", "weights": {"x": 1}, "bias": 0}')
    with pytest.raises(InputError, match="malformed"):
        Calibration.load(tmp_path / "bad.json")
    (tmp_path / "nojson.json").write_text("weights: 1")
    with pytest.raises(InputError, match="not JSON"):
        Calibration.load(tmp_path / "nojson.json")


@pytest.fixture
def lists(tmp_path: Path) -> dict[str, Path]:
    """A store of 8 speakers x 4 utterances; dev = speakers 0-3, test = speakers 4-7, all pairs."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(8, 10)) * 1.2
    ids = [f"s{s}/u{u}.wav" for s in range(8) for u in range(4)]
    vecs = np.repeat(centres, 4, axis=0) + rng.normal(size=(32, 10))
    paths = {
        "emb": tmp_path / "emb.h5",
        "dev": tmp_path / "dev.txt",
        "test": tmp_path / "test.txt",
        "onlytarget": tmp_path / "onlytarget.txt",
        "cohort": tmp_path / "cohort.h5",
        "manifest": tmp_path / "m.tsv",
    }
    write_embeddings(paths["emb"], ids, vecs)
    write_embeddings(paths["cohort"], [f"c{i}" for i in range(20)], rng.normal(size=(20, 10)))
    for name, rng_ids in (("dev", ids[:16]), ("test", ids[16:])):
        rows = [f"{int(a[:2] == b[:2])} {a} {b}" for i, a in enumerate(rng_ids) for b in rng_ids[i + 1 :]]
        paths[name].write_text("\n".join(rows) + "\n")
    paths["onlytarget"].write_text(f"1 {ids[0]} {ids[1]}\n1 {ids[2]} {ids[3]}\n")
    paths["manifest"].write_text(
        "utt_id\tpath\tspeaker\tduration\tsample_rate\n"
        + "".join(f"{u}\t{u}\t{u[:2]}\t{3 + i % 5}\t16000\n" for i, u in enumerate(ids))
    )
    return paths


def test_cli_fits_on_dev_and_applies_to_test(lists: dict[str, Path], tmp_path: Path) -> None:
    cal = tmp_path / "cal.json"
    r = runner.invoke(app, ["score", str(lists["dev"]), str(lists["emb"]), "--fit-calibration", str(cal), "--json"])
    assert r.exit_code == 0, r.output
    fitted = json.loads(r.stdout)["calibration"]
    assert fitted["cllr_after"] < fitted["cllr_before"] and cal.is_file()
    raw = json.loads(runner.invoke(app, ["score", str(lists["test"]), str(lists["emb"]), "--json"]).stdout)
    r = runner.invoke(
        app, ["score", str(lists["test"]), str(lists["emb"]), "--calibration", str(cal), "--json", "--p-target", "0.1"]
    )
    assert r.exit_code == 0, r.output
    calibrated = json.loads(r.stdout)
    assert calibrated["calibrated"] is True and calibrated["cllr"] < raw["cllr"]
    assert calibrated["eer"] == pytest.approx(raw["eer"])
    assert "actdcf_p0.1" in calibrated and "actdcf_p0.01" not in calibrated
    # With the duration quality measure, from a manifest.
    r = runner.invoke(
        app,
        [
            "score",
            str(lists["dev"]),
            str(lists["emb"]),
            "--fit-calibration",
            str(cal),
            "--quality",
            "duration",
            "--manifest",
            str(lists["manifest"]),
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(cal.read_text())["quality"] == ["duration"]
    r = runner.invoke(app, ["score", str(lists["test"]), str(lists["emb"]), "--calibration", str(cal)])
    assert r.exit_code == 2 and "--quality duration" in r.stderr


def test_cli_calibration_bad_inputs_write_nothing(lists: dict[str, Path], tmp_path: Path) -> None:
    cal, out = tmp_path / "cal.json", tmp_path / "scores.txt"
    out.write_text("precious\n")
    r = runner.invoke(
        app, ["score", str(lists["onlytarget"]), str(lists["emb"]), "--fit-calibration", str(cal), "-o", str(out)]
    )
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "needs target and non-target" in lines[0] and str(lists["onlytarget"]) in lines[0]
    assert not cal.exists() and out.read_text() == "precious\n"
    # A calibration fitted on AS-normed scores does not apply to raw cosine scores.
    r = runner.invoke(
        app,
        [
            "score",
            str(lists["dev"]),
            str(lists["emb"]),
            "--cohort",
            str(lists["cohort"]),
            "--norm",
            "asnorm",
            "--fit-calibration",
            str(cal),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["score", str(lists["test"]), str(lists["emb"]), "--calibration", str(cal), "-o", str(out)])
    assert r.exit_code == 2 and "asnorm" in r.stderr and out.read_text() == "precious\n"
    r = runner.invoke(
        app,
        [
            "score",
            str(lists["dev"]),
            str(lists["emb"]),
            "--calibration",
            str(cal),
            "--fit-calibration",
            str(tmp_path / "c2.json"),
        ],
    )
    assert r.exit_code == 2 and "not both" in r.stderr
