"""Score spaces and cohort normalisations against direct per-trial loops, and the fast trial reader
against the line parser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spkemb.data.trials import read_trials
from spkemb.errors import InputError
from spkemb.scoring.backends import ScoreSpace
from spkemb.scoring.norm import normalize_scores
from spkemb.scoring.plda import Plda
from spkemb.scoring.scores_io import format_scores, read_trial_table, resolve_rows


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _reference_norm(score, cohort_scores_e, cohort_scores_t, mode: str, k: int) -> float:  # noqa: ANN001
    """One trial, the textbook way: sort each side's cohort scores, take the statistics, normalise."""

    def stats(xs: list[float], top: int | None) -> tuple[float, float]:
        xs = sorted(xs, reverse=True)[:top] if top else xs
        return float(np.mean(xs)), float(np.std(xs))

    me, se = stats(cohort_scores_e, k if mode == "asnorm" else None)
    mt, st = stats(cohort_scores_t, k if mode == "asnorm" else None)
    z, t = (score - me) / se, (score - mt) / st
    return {"znorm": z, "tnorm": t, "snorm": 0.5 * (z + t), "asnorm": 0.5 * (z + t)}[mode]


@pytest.mark.parametrize("mode", ["znorm", "tnorm", "snorm", "asnorm"])
def test_cosine_norms_equal_a_per_trial_loop(mode: str) -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(7, 5))
    cohort = rng.normal(size=(11, 5))
    e = np.array([0, 0, 1, 2, 5, 6, 3])
    t = np.array([3, 4, 4, 5, 0, 6, 1])
    space, coh = ScoreSpace.cosine(v), ScoreSpace.cosine(cohort)
    raw = space.pairs(e, t)
    for k in (2, 4, 11, 50):
        got = normalize_scores(raw, space, e, t, coh, mode, top_k=k if mode == "asnorm" else None)
        want = [
            _reference_norm(_cos(v[i], v[j]), [_cos(v[i], c) for c in cohort], [_cos(v[j], c) for c in cohort], mode, k)
            for i, j in zip(e, t, strict=True)
        ]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["znorm", "snorm", "asnorm"])
def test_plda_norms_equal_a_per_trial_loop(mode: str) -> None:
    """The same normalisations on PLDA scores: the cohort is scored with the PLDA LLR, pair by pair."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(12, 6)) * 2
    train = np.repeat(centres, 5, axis=0) + rng.normal(size=(60, 6))
    plda = Plda.fit(train, [f"s{i // 5}" for i in range(60)])
    v, cohort = rng.normal(size=(6, 6)), rng.normal(size=(9, 6))
    e, t = np.array([0, 1, 2, 3, 4]), np.array([5, 4, 3, 2, 0])
    space, coh = plda.space(v), plda.space(cohort)
    got = normalize_scores(space.pairs(e, t), space, e, t, coh, mode, top_k=4 if mode == "asnorm" else None)
    want = [
        _reference_norm(
            plda.llr(v[i], v[j]), [plda.llr(v[i], c) for c in cohort], [plda.llr(v[j], c) for c in cohort], mode, 4
        )
        for i, j in zip(e, t, strict=True)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_score_space_matrix_agrees_with_pairs() -> None:
    rng = np.random.default_rng(2)
    space = ScoreSpace(rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=8))
    m = space.matrix(space)
    i, j = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    np.testing.assert_allclose(m, space.pairs(i.ravel(), j.ravel()).reshape(8, 8), rtol=1e-5, atol=1e-5)


def test_norm_rejects_bad_cohorts() -> None:
    rng = np.random.default_rng(3)
    space = ScoreSpace.cosine(rng.normal(size=(4, 3)))
    e, t = np.array([0, 1]), np.array([2, 3])
    with pytest.raises(InputError, match="at least 2"):
        normalize_scores(space.pairs(e, t), space, e, t, ScoreSpace.cosine(rng.normal(size=(1, 3))), "znorm")
    with pytest.raises(InputError, match="-d"):
        normalize_scores(space.pairs(e, t), space, e, t, ScoreSpace.cosine(rng.normal(size=(5, 4))), "snorm")
    with pytest.raises(InputError, match="unknown"):
        normalize_scores(space.pairs(e, t), space, e, t, space, "xnorm")


@pytest.mark.parametrize(
    "text",
    [
        "1 a b\n0 a c\n1 b c\n",  # VoxCeleb
        "a b target\na c nontarget\n",  # Kaldi
        "a b 0.5 target\na c -0.25 nontarget\n",  # scores with labels
        "a b 0.5\na c 1e-3\n",  # scores without labels
        "a b\na c\n",  # unlabelled
        "1\ta b\n0 a  c\n",  # tabs and double blanks: the line parser
        "# comment\n1 a b\n\n0 a c\n",  # comments and blank lines: the line parser
        "1 a b\na c nontarget\n",  # mixed labelled formats: the line parser
    ],
)
def test_fast_reader_agrees_with_the_line_parser(tmp_path: Path, text: str) -> None:
    f = tmp_path / "t.txt"
    f.write_text(text)
    table, ref = read_trial_table(f), read_trials(f)
    assert table.enroll.to_pylist() == ref.enroll and table.test.to_pylist() == ref.test
    assert (table.labels is None) == (ref.labels is None)
    if ref.labels is not None:
        assert table.labels is not None and table.labels.tolist() == ref.labels.tolist()


def test_scores_round_trip_through_the_writer(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("1 a b\n0 a c\n")
    table = read_trial_table(f)
    data = bytes(format_scores(table, np.array([0.1234567, -0.0000001]), table.labels))
    assert data.decode().splitlines() == ["a b 0.1234567 target", "a c -1e-7 nontarget"]
    (tmp_path / "s.txt").write_bytes(data)
    back = read_trial_table(tmp_path / "s.txt")
    assert back.scores is not None and back.scores.tolist() == [0.1234567, -0.0000001]  # exact: metrics agree
    assert back.labels is not None and back.labels.tolist() == [1, 0]
    # An id with a quote character cannot go through Arrow unquoted: the slow writer takes it.
    f.write_text('1 a"x b\n')
    table = read_trial_table(f)
    assert bytes(format_scores(table, np.array([0.5]), table.labels)).decode() == 'a"x b 0.5 target\n'


def test_resolve_rows_reports_missing_ids_in_order(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("1 a b\n0 x c\n0 b z\n1 a c\n0 y x\n")
    table = read_trial_table(f)
    with pytest.raises(InputError, match=r"emb.h5: 3 trial ids are not in .*x, z, y"):
        resolve_rows(table, ["a", "b", "c"], source="emb.h5")
    e, t, keep, missing = resolve_rows(table, ["a", "b", "c"], skip_missing=True)
    assert keep.tolist() == [True, False, False, True, False] and missing == ["x", "z", "y"]
    assert e.tolist() == [0, 0] and t.tolist() == [1, 2]
