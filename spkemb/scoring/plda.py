"""Two-covariance PLDA (Brummer and de Villiers 2010; Sizov et al. 2014) with LDA and
length-normalisation preprocessing, as Kaldi's and sslsv's back-ends use it.

Preprocessing, fitted on a labelled training store: LDA to ``lda_dim`` dimensions (scikit-learn),
centre, whiten with the total covariance, scale every row to length ``sqrt(dim)`` (Garcia-Romero
and Espy-Wilson 2011). Model: ``x = y + e`` with the speaker variable ``y ~ N(mu, B)`` and the
noise ``e ~ N(0, W)``, fitted by EM. The verification score is the log-likelihood ratio of
"same speaker" against "different speakers" for a pair of preprocessed rows; after simultaneous
diagonalisation of ``B`` and ``W`` it is ``z_a . z_b + bias_a + bias_b``, so it plugs into
:class:`~spkemb.scoring.backends.ScoreSpace` and is as cheap as cosine.

A model is saved as ``.npz`` (plain arrays, loaded with ``allow_pickle=False``), never pickled,
with the training store's ``checkpoint_sha256`` and ``encoder_config`` (strings) when it had them,
so that a model is not applied to another encoder's embeddings unnoticed.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spkemb.errors import InputError
from spkemb.options import Options, opt
from spkemb.scoring.backends import ScoreSpace

__all__ = ["ENCODER_KEYS", "Plda", "PldaOptions"]

FORMAT = "spkemb-plda-v1"
ENCODER_KEYS = ("checkpoint_sha256", "encoder_config")  # store attributes that name the encoder
_ARRAYS = ("lda_mean", "lda", "whiten", "center", "mu", "between", "within")
_ATTR_CHARS = 1 << 20  # longest encoder attribute read from a model file
_DEGENERATE = 1e-10  # relative singular value / covariance ratio below which a model scores all trials alike


@dataclass(frozen=True)
class PldaOptions(Options):
    """How a PLDA back-end is trained (values checked here; ``lda_dim`` against the data in :meth:`Plda.fit`)."""

    lda_dim: int | None = opt(None, "LDA dimension (None: min(embedding size, training speakers - 1))")
    iterations: int = opt(10, "EM iterations of the two-covariance model")

    def __post_init__(self) -> None:
        if self.lda_dim is not None and self.lda_dim < 1:
            raise ValueError(f"lda_dim: must be at least 1, got {self.lda_dim}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be at least 0, got {self.iterations}")


@dataclass
class Plda:
    """A trained back-end: the preprocessing and the two covariances, all in the preprocessed space."""

    lda_mean: np.ndarray  # (D,) applied before the LDA projection
    lda: np.ndarray  # (D, d)
    whiten: np.ndarray  # (d, d), applied after subtracting ``center``
    center: np.ndarray  # (d,)
    mu: np.ndarray  # (d,) speaker mean
    between: np.ndarray  # (d, d) speaker covariance B
    within: np.ndarray  # (d, d) noise covariance W
    encoder: dict[str, Any] = field(default_factory=dict)  # ENCODER_KEYS of the training store, when known

    @property
    def dim(self) -> int:
        """Embedding size the model takes."""
        return int(self.lda.shape[0])

    def preprocess(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InputError(f"the PLDA model takes {self.dim}-d embeddings, got shape {x.shape}")
        return _length_norm(((x - self.lda_mean) @ self.lda - self.center) @ self.whiten)

    def space(self, vectors: np.ndarray) -> ScoreSpace:
        """The score space of ``vectors``: ``z_a . z_b + bias_a + bias_b`` is the PLDA LLR."""
        with _one_blas_thread():
            v, p, q, const = _diagonal_form(self.between, self.within)
            y = (self.preprocess(vectors) - self.mu) @ v
        z = (y * np.sqrt(p)).astype(np.float32)
        bias = 0.5 * (y * y) @ q + 0.5 * const
        return ScoreSpace(z, bias)

    def llr(self, a: np.ndarray, b: np.ndarray) -> float:
        """The LLR of one pair, straight from the joint Gaussian (a reference for :meth:`space`)."""
        x1, x2 = self.preprocess(np.stack([a, b])) - self.mu
        tot = self.between + self.within
        joint = np.block([[tot, self.between], [self.between, tot]])
        return float(_log_gauss(np.concatenate([x1, x2]), joint) - _log_gauss(x1, tot) - _log_gauss(x2, tot))

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        speakers: list[str] | None,
        options: PldaOptions = PldaOptions(),
        source: str | Path | None = None,
    ) -> Plda:
        x, spk = _check_training(vectors, speakers, source)
        n_spk = int(spk.max()) + 1
        dim = min(x.shape[1], n_spk - 1) if options.lda_dim is None else options.lda_dim
        if not 1 <= dim <= min(x.shape[1], n_spk - 1):
            raise InputError(
                f"`lda_dim` must be between 1 and {min(x.shape[1], n_spk - 1)} (the embedding size "
                f"and the number of training speakers - 1), got {dim}",
                source,
            )
        # Imported before the BLAS limit: it only reaches libraries already loaded (scipy brings its own).
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        with _one_blas_thread():
            return cls._fit(x, spk, dim, options, LinearDiscriminantAnalysis)

    @classmethod
    def _fit(cls, x: np.ndarray, spk: np.ndarray, dim: int, options: PldaOptions, lda_class: Any) -> Plda:
        lda = lda_class(n_components=dim, solver="svd").fit(x, spk)
        # The fitted transform is affine; read it off as (x - m) @ A with m the training mean.
        lda_mean = x.mean(axis=0)
        proj = lda.transform(np.vstack([lda_mean, lda_mean + np.eye(x.shape[1])]))
        mat = proj[1:] - proj[0]
        y = (x - lda_mean) @ mat
        center = y.mean(axis=0)
        evals, evecs = np.linalg.eigh(np.cov(y - center, rowvar=False).reshape(dim, dim))
        whiten = evecs / np.sqrt(np.maximum(evals, 1e-10))
        y = _length_norm((y - center) @ whiten)
        mu, between, within = _em(y, spk, options.iterations)
        return cls(lda_mean, mat, whiten, center, mu, between, within)

    def save(self, path: str | Path) -> None:
        from spkemb.utils.fileio import atomic_write_bytes

        atomic_write_bytes(path, self.to_bytes())

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's bytes."""
        buf = io.BytesIO()
        arrays: dict[str, Any] = {"format": np.array(FORMAT), **{k: getattr(self, k) for k in _ARRAYS}}
        arrays.update(
            {
                k: np.array(v if isinstance(v, str) else json.dumps(v, sort_keys=True))
                for k, v in self.encoder.items()
                if k in ENCODER_KEYS and v
            }
        )
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def load(cls, path: str | Path, dim: int | None = None) -> Plda:
        """Read a model saved by :meth:`save`. The arrays' shapes are read from their headers and
        checked (against ``dim``, the embedding size of the store it will score, when given) before
        any array is read, so that a forged file cannot make it allocate more than the model it
        claims to be; the values are checked after (finite, covariances positive definite)."""
        p = Path(path)
        if not p.is_file():
            raise InputError("no such PLDA model", path)
        with open(p, "rb") as f:
            magic = f.read(6)
        if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
            raise InputError("not a spkemb PLDA model (not an .npz archive)", path)
        try:
            loaded = np.load(p, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):  # a lone .npy array
                raise InputError("not a spkemb PLDA model (a .npy array, not an .npz archive)", path)
            with loaded as z:
                if "format" not in z.files or _text_size(z, "format") > len(FORMAT) or str(z["format"]) != FORMAT:
                    raise InputError("not a spkemb PLDA model (.npz without format 'spkemb-plda-v1')", path)
                _check_shapes(_header_shapes(z, _ARRAYS, path), dim, path)
                arrays: dict[str, Any] = {k: np.asarray(z[k], dtype=np.float64) for k in _ARRAYS}
                encoder = {
                    k: _attr(k, str(z[k])) for k in ENCODER_KEYS if k in z.files and _text_size(z, k) < _ATTR_CHARS
                }
                model = cls(**arrays, encoder=encoder)
        except InputError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise InputError(f"cannot read PLDA model ({str(err).splitlines()[0][:160]})", path) from None
        _check_values(model, path)
        return model


def _text_size(z: Any, key: str) -> int:
    """Characters in the string array ``key`` per its header (a forged header cannot make it be read:
    anything but a small text array counts as too big)."""
    shape, dtype = _header_shapes(z, (key,), "")[key]
    if dtype.kind not in "US" or shape != ():
        return 1 << 62
    return int(dtype.itemsize) // (4 if dtype.kind == "U" else 1)


def _header_shapes(z: Any, keys: tuple[str, ...], path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """``name -> (shape, dtype)`` of the arrays ``keys``, from their ``.npy`` headers alone."""
    fmt = np.lib.format
    out = {}
    for key in keys:
        if key not in z.files:
            raise InputError(f"not a complete PLDA model (no array {key!r})", path)
        with z.zip.open(f"{key}.npy") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise InputError(f"not a spkemb PLDA model ({key} is a .npy file of version {version})", path)
        out[key] = (tuple(int(n) for n in shape), dtype)
    return out


def _check_shapes(shapes: dict[str, tuple[tuple[int, ...], np.dtype[Any]]], dim: int | None, path: str | Path) -> None:
    lda_shape = shapes["lda"][0]
    if len(lda_shape) != 2 or not 1 <= lda_shape[1] <= lda_shape[0]:
        raise InputError(f"not a PLDA model: its LDA matrix has shape {lda_shape}", path)
    big, small = lda_shape
    if dim is not None and big != dim:
        raise InputError(f"the PLDA model takes {big}-d embeddings but the store holds {dim}-d embeddings", path)
    expected = {
        "lda_mean": (big,),
        "lda": (big, small),
        "whiten": (small, small),
        "center": (small,),
        "mu": (small,),
        "between": (small, small),
        "within": (small, small),
    }
    for key, want in expected.items():
        shape, dtype = shapes[key]
        if shape != want:
            raise InputError(f"not a PLDA model: {key} has shape {shape}, expected {want} (LDA {big} -> {small})", path)
        if dtype.kind != "f":
            raise InputError(f"not a PLDA model: {key} holds {dtype} values, not floats", path)


def _check_values(model: Plda, path: str | Path) -> None:
    for key in _ARRAYS:
        if not np.isfinite(getattr(model, key)).all():
            raise InputError(f"not a usable PLDA model: {key} holds non-finite values", path)
    for key in ("between", "within"):
        cov = getattr(model, key)
        if not np.allclose(cov, cov.T, rtol=1e-6, atol=1e-12 * max(1.0, float(np.abs(cov).max()))):
            raise InputError(f"not a usable PLDA model: the {key}-speaker covariance is not symmetric", path)
        evals = np.linalg.eigvalsh(0.5 * (cov + cov.T))
        if evals.min() <= 0:
            raise InputError(
                f"not a usable PLDA model: the {key}-speaker covariance is not positive definite "
                f"(smallest eigenvalue {evals.min():.3g})",
                path,
            )
    # A model that maps every embedding to (nearly) one point, or whose speaker covariance vanishes
    # against the noise, scores every trial the same: refused rather than an EER of 50 %.
    sv = np.linalg.svd(model.lda @ model.whiten, compute_uv=False)
    if not sv.min() > _DEGENERATE * sv.max():
        raise InputError(
            f"not a usable PLDA model: its projection (lda @ whiten) has rank below {len(sv)} "
            f"(singular values {sv.max():.3g} .. {sv.min():.3g}), so embeddings differing there score the same",
            path,
        )
    psi = np.linalg.eigvalsh(np.linalg.solve(model.within, model.between))
    if not psi.max() > _DEGENERATE:
        raise InputError(
            f"not a usable PLDA model: the between-speaker covariance is ~0 against the within-speaker one "
            f"(largest ratio {psi.max():.3g}), so every trial would get the same score",
            path,
        )


def _attr(key: str, text: str) -> Any:
    """A saved encoder attribute as :func:`~spkemb.embeddings.store.read_embeddings` gives it (the
    ``encoder_config`` JSON parsed), so that the two compare equal."""
    if key != "encoder_config":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _one_blas_thread() -> Any:
    """A context with BLAS/LAPACK on one thread. The matrices here are small (D <= a few hundred), so
    one thread is as fast, while a multi-threaded OpenBLAS on a busy machine was measured 9x slower
    (a 1,013 x 192 PLDA fit: 22 s instead of 2.5 s; a 192 x 192 eigh: 0.76 s)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _length_norm(y: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(y, axis=1, keepdims=True)
    return y * (np.sqrt(y.shape[1]) / np.maximum(norms, 1e-12))


def _log_gauss(x: np.ndarray, cov: np.ndarray) -> float:
    sign, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (logdet + x @ np.linalg.solve(cov, x) + x.size * np.log(2 * np.pi)))


def _diagonal_form(between: np.ndarray, within: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(V, p, q, c)``: with ``y = V^T (x - mu)`` (``W`` -> I, ``B`` -> diag(psi)) the LLR of a pair
    is ``sum(p y1 y2) + 0.5 sum(q (y1^2 + y2^2)) + c``."""
    chol = np.linalg.cholesky(within)
    inv = np.linalg.inv(chol)
    psi, u = np.linalg.eigh(inv @ between @ inv.T)
    psi = np.maximum(psi, 0.0)
    v = inv.T @ u
    p = psi / (1.0 + 2.0 * psi)
    q = -psi * psi / ((1.0 + psi) * (1.0 + 2.0 * psi))
    const = float(np.sum(np.log1p(psi) - 0.5 * np.log1p(2.0 * psi)))
    return v, p, q, const


def _check_training(
    vectors: np.ndarray, speakers: list[str] | None, source: str | Path | None
) -> tuple[np.ndarray, np.ndarray]:
    if not speakers or not any(speakers):
        raise InputError(
            "the PLDA training store has no speaker labels (extract it from a manifest with a speaker column)", source
        )
    x = np.asarray(vectors, dtype=np.float64)
    keep = np.array([bool(s) for s in speakers])
    names, spk = np.unique(np.asarray(speakers, dtype=object)[keep].astype(str), return_inverse=True)
    x = x[keep]
    if len(names) < 2:
        raise InputError(f"PLDA needs at least 2 training speakers, the store has {len(names)}", source)
    if np.bincount(spk).max() < 2:
        raise InputError(
            "PLDA needs speakers with at least 2 embeddings each to learn the within-speaker "
            "covariance; every training speaker has one",
            source,
        )
    if not np.isfinite(x).all():
        raise InputError("the PLDA training store holds non-finite embeddings", source)
    return x, spk


def _em(y: np.ndarray, spk: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for the two-covariance model on rows ``y`` with speaker indices ``spk``."""
    n_spk, dim = int(spk.max()) + 1, y.shape[1]
    counts = np.bincount(spk).astype(np.float64)
    sums = np.zeros((n_spk, dim))
    np.add.at(sums, spk, y)
    means = sums / counts[:, None]
    resid = y - means[spk]
    n_within = max(1.0, float((counts - 1).sum()))
    within = resid.T @ resid / n_within + 1e-6 * np.eye(dim)
    mu = means.mean(axis=0)
    between = np.cov(means, rowvar=False).reshape(dim, dim) + 1e-6 * np.eye(dim)
    scatter = y.T @ y
    for _ in range(iterations):
        b_inv, w_inv = np.linalg.inv(between), np.linalg.inv(within)
        gamma = np.empty((n_spk, dim))
        post_cov_sum = np.zeros((dim, dim))  # sum over speakers of Cov(y_s)
        post_cov_weighted = np.zeros((dim, dim))  # sum of n_s Cov(y_s)
        for n in np.unique(counts):
            members = counts == n
            cov = np.linalg.inv(b_inv + n * w_inv)
            gamma[members] = (b_inv @ mu + sums[members] @ w_inv) @ cov  # cov is symmetric
            post_cov_sum += members.sum() * cov
            post_cov_weighted += members.sum() * n * cov
        mu = gamma.mean(axis=0)
        between = (post_cov_sum + gamma.T @ gamma) / n_spk - np.outer(mu, mu)
        cross = sums.T @ gamma
        within = (scatter - cross - cross.T + post_cov_weighted + (gamma * counts[:, None]).T @ gamma) / y.shape[0]
        between, within = 0.5 * (between + between.T), 0.5 * (within + within.T)
    return mu, between, within
