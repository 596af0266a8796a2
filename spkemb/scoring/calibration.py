"""Linear logistic-regression calibration: scores (and quality measures) to log-likelihood ratios.

``llr = a * score + sum_i c_i * q_i + b`` is fitted on a labelled development list by prior-weighted
logistic regression (BOSARIS's ``train_linear_calibration``; scikit-learn's solver): targets and
non-targets are weighted to the effective prior ``prior``, and ``logit(prior)`` is taken off the
fitted log-odds, so the output is an LLR whatever the proportion of targets in the list. Quality
measures are WeSpeaker's QMF idea: with ``duration``, the log of the shorter and of the longer of
the two utterances' durations enter as two more features, so short trials get their own offset and
scale.

Saved as a small JSON file (``format: spkemb-calibration``) with the weights, the quality measures
it expects and what it was fitted on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spkemb.errors import InputError

__all__ = ["QUALITY_MEASURES", "Calibration", "duration_features"]

FORMAT = "spkemb-calibration"
QUALITY_MEASURES = {"duration": ("log_min_duration", "log_max_duration")}


@dataclass
class Calibration:
    """``llr = weights . [score, quality features...] + bias``."""

    weights: dict[str, float]
    bias: float
    quality: list[str] = field(default_factory=list)
    prior: float = 0.5
    system: dict[str, Any] = field(default_factory=dict)  # what the scores were: back-end, normalisation
    fitted_on: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return ["score"] + [n for q in self.quality for n in QUALITY_MEASURES[q]]

    @classmethod
    def fit(
        cls,
        scores: np.ndarray,
        labels: np.ndarray,
        quality: dict[str, np.ndarray] | None = None,
        prior: float = 0.5,
        source: str | Path | None = None,
    ) -> Calibration:
        """Fit on labelled ``scores``; ``quality`` maps a measure of :data:`QUALITY_MEASURES` to its
        (T, 2) features. One class only, or non-finite values, raise InputError."""
        quality = quality or {}
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        lab = np.asarray(labels).reshape(-1).astype(bool)
        n_tar, n_non = int(lab.sum()), int((~lab).sum())
        if n_tar == 0 or n_non == 0:
            raise InputError(
                f"a calibration set needs target and non-target trials; it has {n_tar} target and {n_non} non-target",
                source,
            )
        if not 0.0 < prior < 1.0:
            raise InputError(f"the calibration prior must be strictly between 0 and 1, got {prior}")
        x = np.column_stack([s] + [quality[q] for q in quality])
        if not np.isfinite(x).all():
            raise InputError("the calibration set has non-finite scores or quality measures", source)
        from sklearn.linear_model import LogisticRegression

        # Standardise the features for the solver, fold the scaling back into the weights.
        mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-12)
        weight = np.where(lab, prior / n_tar, (1.0 - prior) / n_non) * lab.size
        model = LogisticRegression(C=1e6, max_iter=1000).fit((x - mean) / std, lab, sample_weight=weight)
        w = model.coef_[0] / std
        b = float(model.intercept_[0] - w @ mean) - float(np.log(prior / (1.0 - prior)))
        cal = cls({}, b, list(quality), prior)
        cal.weights = dict(zip(cal.feature_names, map(float, w), strict=True))
        return cal

    def apply(self, scores: np.ndarray, quality: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Calibrated LLRs of ``scores``; ``quality`` must hold the measures the model was fitted with."""
        quality = quality or {}
        missing = [q for q in self.quality if q not in quality]
        if missing:
            raise InputError(
                f"the calibration uses quality measure(s) {', '.join(missing)} (give `quality` "
                f"{' `quality` '.join(missing)} and what they need)"
            )
        x = np.column_stack([np.asarray(scores, dtype=np.float64)] + [quality[q] for q in self.quality])
        w = np.array([self.weights[n] for n in self.feature_names])
        with np.errstate(over="ignore"):  # an overflow is refused, naming this file, before anything is written
            return np.asarray(x @ w + self.bias, dtype=np.float64)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": 1, **asdict(self)}, indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> None:
        from spkemb.utils.fileio import atomic_write_text

        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        p = Path(path)
        if not p.is_file():
            raise InputError("no such calibration file", path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"not a calibration file (not JSON: {err})", path) from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise InputError(f'not a calibration file (no "format": "{FORMAT}")', path)
        try:
            cal = cls(
                weights={str(k): _number(f"weight {k!r}", v) for k, v in d["weights"].items()},
                bias=_number("bias", d["bias"]),
                quality=[str(q) for q in d.get("quality", [])],
                prior=_number("prior", d.get("prior", 0.5)),
                system=dict(d.get("system", {})),
                fitted_on=dict(d.get("fitted_on", {})),
            )
            if not 0.0 < cal.prior < 1.0:
                raise ValueError(f"prior {cal.prior} is not strictly between 0 and 1")
            unknown = [q for q in cal.quality if q not in QUALITY_MEASURES]
            if unknown or set(cal.weights) != set(cal.feature_names):
                raise ValueError(f"weights {sorted(cal.weights)} do not match the features {cal.feature_names}")
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InputError(f"malformed calibration file ({err})", path) from None
        return cal


def _number(what: str, value: Any) -> float:
    """A finite JSON number (not a string, a bool, NaN or infinity: Python's JSON reader takes NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} is {value!r}, not a number")
    if not np.isfinite(value):
        raise ValueError(f"{what} is {value}, not a finite number")
    return float(value)


def duration_features(enroll_seconds: np.ndarray, test_seconds: np.ndarray) -> np.ndarray:
    """(T, 2): log of the shorter and of the longer duration of each trial's two utterances."""
    d = np.maximum(np.column_stack([enroll_seconds, test_seconds]).astype(np.float64), 1e-3)
    return np.log(np.column_stack([d.min(axis=1), d.max(axis=1)]))
