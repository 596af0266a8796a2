"""Two-covariance PLDA: it beats cosine where the within-speaker noise is anisotropic, its fast
score equals the joint-Gaussian LLR, its saved model scores the same, bad training stores fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from spkemb.cli.app import app
from spkemb.embeddings.store import write_embeddings
from spkemb.errors import InputError
from spkemb.scoring.backends import ScoreSpace
from spkemb.scoring.metrics import compute_eer
from spkemb.scoring.plda import Plda, PldaOptions

runner = CliRunner()
DIM = 16


def _speakers(n_spk: int, per_spk: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Speaker means differ mostly in dims 0-7; the within-speaker noise is large in dims 8-15."""
    rng = np.random.default_rng(seed)
    between = np.r_[np.full(8, 1.0), np.full(8, 0.3)]
    within = np.r_[np.full(8, 0.4), np.full(8, 3.0)]
    means = rng.normal(size=(n_spk, DIM)) * between
    x = np.repeat(means, per_spk, axis=0) + rng.normal(size=(n_spk * per_spk, DIM)) * within
    return x, [f"s{seed}-{i // per_spk}" for i in range(n_spk * per_spk)]


def _all_pairs(n: int, per_spk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n, k=1)
    return i, j, (i // per_spk == j // per_spk).astype(np.int8)


def test_plda_beats_cosine_with_anisotropic_within_speaker_noise() -> None:
    train, spk = _speakers(150, 8, seed=0)
    test, _ = _speakers(40, 6, seed=1)
    e, t, labels = _all_pairs(len(test), 6)
    plda = Plda.fit(train, spk)
    eer_plda = compute_eer(plda.space(test).pairs(e, t), labels)[0]
    eer_cos = compute_eer(ScoreSpace.cosine(test).pairs(e, t), labels)[0]
    assert eer_plda < 0.6 * eer_cos, (eer_plda, eer_cos)
    assert eer_cos > 0.15  # the noise really hurts cosine


def test_fast_score_is_the_joint_gaussian_llr_and_symmetric() -> None:
    train, spk = _speakers(60, 5, seed=2)
    plda = Plda.fit(train, spk, PldaOptions(lda_dim=10))
    x = np.random.default_rng(3).normal(size=(5, DIM))
    space = plda.space(x)
    for a in range(5):
        for b in range(5):
            fast = space.pairs(np.array([a]), np.array([b]))[0]
            assert fast == pytest.approx(plda.llr(x[a], x[b]), rel=1e-4, abs=1e-4)
            assert fast == pytest.approx(space.pairs(np.array([b]), np.array([a]))[0], rel=1e-6)
    assert space.z.shape == (5, 10)


def test_saved_model_scores_the_same(tmp_path: Path) -> None:
    train, spk = _speakers(40, 4, seed=4)
    plda = Plda.fit(train, spk)
    plda.save(tmp_path / "m.npz")
    back = Plda.load(tmp_path / "m.npz")
    x = train[:7]
    np.testing.assert_allclose(back.space(x).matrix(back.space(x)), plda.space(x).matrix(plda.space(x)), rtol=1e-6)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:  # plain arrays only
        assert all(z[k].dtype != object for k in z.files)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="bad.npz"):
        Plda.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(InputError, match="not a spkemb PLDA model"):
        Plda.load(tmp_path / "other.npz")


def test_bad_training_sets() -> None:
    x, spk = _speakers(5, 3, seed=5)
    with pytest.raises(InputError, match="no speaker labels"):
        Plda.fit(x, None)
    with pytest.raises(InputError, match="no speaker labels"):
        Plda.fit(x, [""] * len(x))
    with pytest.raises(InputError, match="at least 2 training speakers"):
        Plda.fit(x, ["one"] * len(x))
    with pytest.raises(InputError, match="at least 2 embeddings each"):
        Plda.fit(x[:5], [f"s{i}" for i in range(5)])
    with pytest.raises(InputError, match="`lda_dim`"):
        Plda.fit(x, spk, PldaOptions(lda_dim=5))  # 5 speakers allow at most 4
    with pytest.raises(InputError, match="takes 16-d"):
        Plda.fit(x, spk).space(np.zeros((2, 3)))


@pytest.fixture
def stores(tmp_path: Path) -> dict[str, Path]:
    train, spk = _speakers(60, 6, seed=6)
    test, _ = _speakers(10, 4, seed=7)
    ids = [f"t{i // 4}/u{i}.wav" for i in range(len(test))]
    paths = {
        "train": tmp_path / "train.h5",
        "test": tmp_path / "test.h5",
        "nolabels": tmp_path / "nolab.h5",
        "trials": tmp_path / "trials.txt",
    }
    write_embeddings(paths["train"], [f"tr{i}" for i in range(len(train))], train, speakers=spk)
    write_embeddings(paths["nolabels"], [f"tr{i}" for i in range(len(train))], train)
    write_embeddings(paths["test"], ids, test)
    e, t, labels = _all_pairs(len(ids), 4)
    paths["trials"].write_text("".join(f"{lab} {ids[a]} {ids[b]}\n" for a, b, lab in zip(e, t, labels, strict=True)))
    return paths


def test_cli_trains_saves_and_reuses_a_plda_model(stores: dict[str, Path], tmp_path: Path) -> None:
    model, out1, out2 = tmp_path / "plda.npz", tmp_path / "s1.txt", tmp_path / "s2.txt"
    r = runner.invoke(
        app,
        [
            "score",
            str(stores["trials"]),
            str(stores["test"]),
            "--backend",
            "plda",
            "--train",
            str(stores["train"]),
            "--save-plda",
            str(model),
            "-o",
            str(out1),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["backend"] == "plda" and model.is_file()
    r = runner.invoke(
        app,
        [
            "score",
            str(stores["trials"]),
            str(stores["test"]),
            "--backend",
            "plda",
            "--plda",
            str(model),
            "-o",
            str(out2),
        ],
    )
    assert r.exit_code == 0, r.output
    assert out1.read_text() == out2.read_text()


def test_cli_plda_bad_inputs_write_nothing(stores: dict[str, Path], tmp_path: Path) -> None:
    out, model = tmp_path / "scores.txt", tmp_path / "plda.npz"
    out.write_text("precious\n")
    base = ["score", str(stores["trials"]), str(stores["test"]), "-o", str(out), "--backend", "plda"]
    cases = [
        (["--train", str(stores["nolabels"]), "--save-plda", str(model)], "no speaker labels"),
        ([], "needs a model"),
        (["--train", str(stores["train"]), "--save-plda", str(tmp_path / "m.pkl")], ".npz"),
        (["--plda", str(tmp_path / "missing.npz")], "no such PLDA model"),
    ]
    for extra, message in cases:
        r = runner.invoke(app, [*base, *extra])
        assert r.exit_code == 2, r.output
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], r.stderr
        assert out.read_text() == "precious\n" and not model.exists()
    r = runner.invoke(app, ["score", str(stores["trials"]), str(stores["test"]), "--train", str(stores["train"])])
    assert r.exit_code == 2 and "--backend plda" in r.stderr


def test_a_plda_model_of_another_encoder_is_refused_unless_allowed(tmp_path: Path) -> None:
    """--save-plda keeps the training store's encoder (plain strings); --plda checks it as --train does."""
    encoder_a = {"checkpoint_sha256": "a" * 64, "encoder_config": {"model": "ecapa", "channels": 512}}
    encoder_b = {"checkpoint_sha256": "b" * 64, "encoder_config": {"model": "resnet", "channels": 32}}
    train, spk = _speakers(40, 5, seed=8)
    test, _ = _speakers(6, 4, seed=9)
    ids = [f"t{i // 4}/u{i}.wav" for i in range(len(test))]
    write_embeddings(
        tmp_path / "train_a.h5", [f"tr{i}" for i in range(len(train))], train, speakers=spk, attrs=encoder_a
    )
    write_embeddings(tmp_path / "test_a.h5", ids, test, attrs=encoder_a)
    write_embeddings(tmp_path / "test_b.h5", ids, test, attrs=encoder_b)
    write_embeddings(tmp_path / "test_c.h5", ids, test, attrs={"encoder_config": encoder_b["encoder_config"]})
    trials, model, out = tmp_path / "trials.txt", tmp_path / "plda.npz", tmp_path / "scores.txt"
    e, t, labels = _all_pairs(len(ids), 4)
    trials.write_text("".join(f"{lab} {ids[a]} {ids[b]}\n" for a, b, lab in zip(e, t, labels, strict=True)))
    r = runner.invoke(
        app,
        [
            "score",
            str(trials),
            str(tmp_path / "test_a.h5"),
            "--backend",
            "plda",
            "--train",
            str(tmp_path / "train_a.h5"),
            "--save-plda",
            str(model),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    with np.load(model, allow_pickle=False) as z:
        assert str(z["checkpoint_sha256"]) == "a" * 64 and z["encoder_config"].dtype.kind == "U"
        assert json.loads(str(z["encoder_config"])) == encoder_a["encoder_config"]
    assert Plda.load(model).encoder == encoder_a

    def score(store: str, *extra: str) -> Result:
        return runner.invoke(
            app,
            [
                "score",
                str(trials),
                str(tmp_path / store),
                "--backend",
                "plda",
                "--plda",
                str(model),
                "-o",
                str(out),
                *extra,
            ],
        )

    r = score("test_a.h5")  # the same encoder: accepted (encoder_config survives the round trip)
    assert r.exit_code == 0, r.output
    out.write_text("precious\n")
    for store, key in (("test_b.h5", "checkpoint_sha256"), ("test_c.h5", "encoder_config")):
        r = score(store)
        assert r.exit_code == 2, r.output
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"{model}: this PLDA model comes from another encoder than {tmp_path / store} " in lines[0]
        assert f"({key} differs)" in lines[0] and "--allow-mixed-encoders" in lines[0]
        assert out.read_text() == "precious\n"
    r = score("test_b.h5", "--allow-mixed-encoders")
    assert r.exit_code == 0, r.output
    assert out.read_text() != "precious\n"
    # A model saved before the encoder was kept is accepted as it is.
    with np.load(model, allow_pickle=False) as z:
        old = {k: z[k] for k in z.files if k not in ("checkpoint_sha256", "encoder_config")}
    np.savez(model, **old)
    assert Plda.load(model).encoder == {}
    r = score("test_b.h5")
    assert r.exit_code == 0, r.output
