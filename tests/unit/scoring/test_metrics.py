"""Metrics against an independent reference (sklearn's ROC), hand cases, and the scoring back-ends."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from spkemb.data.trials import Trials
from spkemb.errors import InputError
from spkemb.scoring.backends import Normalizer, as_norm, cosine_scores, resolve_ids
from spkemb.scoring.metrics import (
    compute_act_dcf,
    compute_cllr,
    compute_eer,
    compute_min_cllr,
    compute_min_dcf,
    det_curve,
    summarize,
)


def _reference(scores: np.ndarray, labels: np.ndarray, p_target: float) -> tuple[float, float]:
    """EER (crossing by linear interpolation, walked segment by segment) and normalised minDCF,
    both from sklearn's ROC points (accept when score >= threshold)."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1.0 - tpr
    eer = None
    for k in range(1, len(fpr)):  # ROC runs from (fpr, fnr) = (0, 1) to (1, 0)
        d0, d1 = fnr[k - 1] - fpr[k - 1], fnr[k] - fpr[k]
        if d0 > 0 and d1 <= 0:
            a = d0 / (d0 - d1)
            eer = fpr[k - 1] + a * (fpr[k] - fpr[k - 1])
            break
    assert eer is not None
    dcf = (p_target * fnr + (1 - p_target) * fpr) / min(p_target, 1 - p_target)
    return float(eer), float(dcf.min())


def _data(n: int, seed: int, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int8)
    scores = rng.normal(size=n) + 1.5 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores, labels


@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_and_min_dcf_match_sklearn_reference(seed: int, decimals: int | None) -> None:
    scores, labels = _data(3000, seed, decimals)
    eer, _ = compute_eer(scores, labels)
    for p in (0.01, 0.05, 0.5):
        ref_eer, ref_dcf = _reference(scores, labels, p)
        assert eer == pytest.approx(ref_eer, abs=1e-6)
        assert compute_min_dcf(scores, labels, p)[0] == pytest.approx(ref_dcf, abs=1e-6)


def test_eer_does_not_depend_on_trial_order_with_ties() -> None:
    scores, labels = _data(2000, 5, decimals=1)
    perm = np.random.default_rng(0).permutation(scores.size)
    assert compute_eer(scores, labels) == compute_eer(scores[perm], labels[perm])


def test_hand_cases() -> None:
    labels = np.array([1, 1, 0, 0, 0])
    good = np.array([0.9, 0.8, 0.1, 0.2, 0.3])
    assert compute_eer(good, labels)[0] == 0.0
    assert compute_min_dcf(good, labels, 0.01)[0] == 0.0
    assert compute_eer(-good, labels)[0] == 1.0
    assert summarize(-good, labels)["eer"] == pytest.approx(100.0)
    # All scores tied: the only points are (0, 1) and (1, 0), so EER = 50 % and minDCF = 1.
    assert compute_eer(np.zeros(5), labels)[0] == pytest.approx(0.5)
    assert compute_min_dcf(np.zeros(5), labels, 0.05)[0] == pytest.approx(1.0)
    # One target below one non-target out of 2 x 2: the DET steps meet at 50 %.
    assert compute_eer(np.array([1.0, 0.2, 0.5, 0.0]), np.array([1, 1, 0, 0]))[0] == pytest.approx(0.5)


def test_det_curve_is_monotone_and_spans_the_square() -> None:
    scores, labels = _data(1000, 3, decimals=1)
    p_miss, p_fa, thr = det_curve(scores, labels)
    assert len(thr) == len(np.unique(scores)) + 1 and np.isinf(thr[-1])
    assert np.all(np.diff(thr) > 0)
    assert np.all(np.diff(p_miss) >= 0) and np.all(np.diff(p_fa) <= 0)
    assert (p_miss[0], p_fa[0], p_miss[-1], p_fa[-1]) == (0.0, 1.0, 1.0, 0.0)


def test_summarize_keys_and_units() -> None:
    scores, labels = _data(500, 4)
    s = summarize(scores, labels)
    assert set(s) == {
        "eer",
        "eer_threshold",
        "mindcf_p0.01",
        "mindcf_p0.05",
        "actdcf_p0.01",
        "actdcf_p0.05",
        "cllr",
        "mincllr",
        "targets",
        "nontargets",
    }
    assert s["eer"] == pytest.approx(100 * compute_eer(scores, labels)[0])
    assert s["targets"] == int(labels.sum()) and s["nontargets"] == int((labels == 0).sum())
    assert 0 <= s["mindcf_p0.01"] <= 1
    assert s["cllr"] == pytest.approx(compute_cllr(scores, labels))
    assert s["mincllr"] == pytest.approx(compute_min_cllr(scores, labels))
    assert s["actdcf_p0.05"] == pytest.approx(compute_act_dcf(scores, labels, 0.05)[0])
    other = summarize(scores, labels, (0.001, 0.1))
    assert "mindcf_p0.001" in other and "actdcf_p0.1" in other and "mindcf_p0.01" not in other


def test_act_dcf_and_cllr() -> None:
    labels = np.array([1, 1, 0, 0])
    assert compute_cllr(np.zeros(4), labels) == pytest.approx(1.0)
    assert compute_cllr(np.array([20.0, 20.0, -20.0, -20.0]), labels) < 1e-6
    act, thr = compute_act_dcf(np.array([5.0, 5.0, -5.0, -5.0]), labels, 0.01)
    assert act == 0.0 and thr == pytest.approx(np.log(99))
    # Everything rejected at the Bayes threshold: cost of misses only, normalised.
    act, _ = compute_act_dcf(np.array([1.0, 1.0, -1.0, -1.0]), labels, 0.01)
    assert act == pytest.approx(1.0)


@pytest.mark.parametrize("p_target", [0.01, 0.05, 0.5])
def test_act_dcf_and_cllr_equal_per_trial_references(p_target: float) -> None:
    """actDCF: count the decisions at the Bayes threshold one trial at a time; Cllr: the formula with math.log2."""
    import math

    scores, labels = _data(2000, 7)
    llr = 2.0 * scores - 1.0
    thr = math.log((1 - p_target) / p_target)
    miss = sum(1 for s, lab in zip(llr, labels, strict=True) if lab and s < thr) / labels.sum()
    fa = sum(1 for s, lab in zip(llr, labels, strict=True) if not lab and s >= thr) / (labels == 0).sum()
    want = (p_target * miss + (1 - p_target) * fa) / min(p_target, 1 - p_target)
    assert compute_act_dcf(llr, labels, p_target)[0] == pytest.approx(want, abs=1e-12)
    c_tar = [math.log2(1 + math.exp(-s)) for s, lab in zip(llr, labels, strict=True) if lab]
    c_non = [math.log2(1 + math.exp(s)) for s, lab in zip(llr, labels, strict=True) if not lab]
    assert compute_cllr(llr, labels) == pytest.approx((np.mean(c_tar) + np.mean(c_non)) / 2, rel=1e-12)


@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("sep", [0.3, 1.5, 6.0])
def test_min_cllr_equals_cllr_after_sklearn_pav(decimals: int | None, sep: float) -> None:
    """Reference: scikit-learn's isotonic regression (PAV, ties pooled) gives the optimal posteriors;
    their LLRs against the list's own prior give minCllr, computed per trial."""
    import math

    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(int(sep * 10) + (decimals or 9))
    labels = (rng.random(2500) < 0.25).astype(np.int8)
    scores = rng.normal(size=2500) + sep * labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    post = IsotonicRegression(y_min=0, y_max=1).fit_transform(scores, labels)
    odds = labels.mean() / (1 - labels.mean())
    c_tar = [0.0 if p == 1 else math.log2(1 + (1 - p) / p * odds) for p, lab in zip(post, labels, strict=True) if lab]
    c_non = [
        0.0 if p == 0 else math.log2(1 + p / (1 - p) / odds) for p, lab in zip(post, labels, strict=True) if not lab
    ]
    want = (np.mean(c_tar) + np.mean(c_non)) / 2
    assert compute_min_cllr(scores, labels) == pytest.approx(want, abs=1e-9)
    assert compute_min_cllr(scores, labels) <= compute_cllr(2 * scores - 1, labels)  # no monotone map beats it


def test_min_cllr_hand_cases_and_the_stack_walk() -> None:
    from spkemb.scoring.metrics import _det, _pav, _pooled

    labels = np.array([1, 1, 0, 0, 0])
    assert compute_min_cllr(np.array([0.9, 0.8, 0.1, 0.2, 0.3]), labels) == 0.0  # separable
    assert compute_min_cllr(np.zeros(5), labels) == pytest.approx(1.0)  # one tied block: no information
    assert compute_min_cllr(-np.array([0.9, 0.8, 0.1, 0.2, 0.3]), labels) == pytest.approx(1.0)  # reversed
    scores, lab = _data(3000, 8, decimals=2)
    counts, tars = _pooled(_det(scores.astype(np.float64), lab.astype(bool)))
    fast, walked = _pav(counts, tars), _pav(counts, tars, passes=0)  # vectorised passes vs the stack walk alone
    assert all(np.array_equal(a, b) for a, b in zip(fast, walked, strict=True))
    assert np.all(np.diff(fast[1] / fast[0]) > 0)  # pooled posteriors strictly increase


@pytest.mark.parametrize(
    "fn",
    [
        compute_eer,
        lambda s, lab: compute_min_dcf(s, lab, 0.01),
        compute_cllr,
        lambda s, lab: compute_act_dcf(s, lab, 0.01),
        summarize,
        compute_min_cllr,
    ],
)
def test_empty_class_raises(fn) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match="no target"):
        fn(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(InputError, match="no non-target"):
        fn(np.array([0.1, 0.2]), np.array([1, 1]))


def test_bad_inputs_raise() -> None:
    with pytest.raises(InputError):
        compute_eer(np.array([0.1, np.nan]), np.array([1, 0]))
    with pytest.raises(InputError):
        compute_eer(np.array([0.1, 0.2]), np.array([1, 2]))
    with pytest.raises(InputError):
        compute_eer(np.array([0.1, 0.2, 0.3]), np.array([1, 0]))


# ---- back-ends ---------------------------------------------------------------------------------


def test_cosine_scores_equal_a_naive_loop() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(20, 8)).astype(np.float32)
    v[3] = 0.0  # a zero vector scores 0, not NaN
    e = rng.integers(0, 20, size=100)
    t = rng.integers(0, 20, size=100)
    got = cosine_scores(v, e, t)
    want = []
    for i, j in zip(e, t, strict=True):
        a, b = v[i].astype(np.float64), v[j].astype(np.float64)
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        want.append(0.0 if na == 0 or nb == 0 else a @ b / (na * nb))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_normalizer_standardize_and_mean() -> None:
    rng = np.random.default_rng(1)
    cohort = rng.normal(3.0, [0.5, 2.0, 10.0], size=(200, 3)).astype(np.float32)
    z = Normalizer.fit(cohort, "standardize").apply(cohort)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-5)
    m = Normalizer.fit(cohort, "mean").apply(cohort)
    np.testing.assert_allclose(m.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(m.std(axis=0), cohort.std(axis=0), rtol=1e-5)
    with pytest.raises(InputError):
        Normalizer.fit(cohort, "mean").apply(np.zeros((2, 4)))


def test_as_norm_equals_a_naive_implementation() -> None:
    rng = np.random.default_rng(2)
    v = rng.normal(size=(6, 4))
    cohort = rng.normal(size=(9, 4))
    e = np.array([0, 0, 1, 2, 5])
    t = np.array([3, 4, 4, 5, 0])
    raw = cosine_scores(v, e, t)
    for k in (3, 9, 50):
        got = as_norm(raw, v, e, t, cohort, top_k=k)

        def cos(a: np.ndarray, b: np.ndarray) -> float:
            return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

        def stats(x: np.ndarray, k: int = k) -> tuple[float, float]:
            top = sorted((cos(x, c) for c in cohort), reverse=True)[:k]
            return float(np.mean(top)), float(np.std(top))

        want = []
        for i, j in zip(e, t, strict=True):
            s = cos(v[i], v[j])
            (me, se), (mt, st) = stats(v[i]), stats(v[j])
            want.append(0.5 * ((s - me) / se + (s - mt) / st))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_resolve_ids_missing_and_skip() -> None:
    index = {"a": 0, "b": 1, "c": 2}
    tr = Trials(["a", "x", "b", "a", "y"], ["b", "c", "z", "c", "x"], np.array([1, 0, 0, 1, 0], np.int8))
    with pytest.raises(InputError) as err:
        resolve_ids(tr, index, skip_missing=False, source="emb.h5")
    msg = str(err.value)
    assert msg.startswith("emb.h5: 3 trial ids are not in") and "x, z, y" in msg and "`skip_missing`" in msg
    e, t, keep, missing = resolve_ids(tr, index, skip_missing=True)
    assert keep.tolist() == [True, False, False, True, False]
    assert e.tolist() == [0, 0] and t.tolist() == [1, 2]
    assert missing == ["x", "z", "y"]
    with pytest.raises(InputError, match="none of the"):
        resolve_ids(Trials(["x"], ["y"]), index, skip_missing=True)
