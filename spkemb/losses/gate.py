"""Loss-gated learning for noisy (pseudo-)labels, as in Miara et al. 2024, with optional label
correction: Tao et al. 2022's loss gate with the threshold found by a Gaussian mixture and the
label correction of Han et al. 2022 (DLG-LC).

Labels from clustering are partly wrong, and a network first fits the right ones: early on, a
wrongly labelled sample has a high loss. So at the end of every epoch :class:`LossGate` fits a
2-component Gaussian mixture (scikit-learn, seeded) to the per-sample losses of that epoch and,
for the next epoch, keeps only the samples that the low-mean component explains (posterior above
``threshold``); the method leaves the others out of its loss (``keep`` masks).

Rules:

- Degenerate epochs keep everything: fewer than ``min_samples`` samples seen, losses all (nearly)
  equal, or one Gaussian explaining the losses better than two (lower BIC; ``bic_check=False``
  leaves this test out).
- The mask is monotone in the loss: a sample whose loss is at most the low component's mean is
  always kept, one at or above the high component's mean always dropped (a 2-Gaussian posterior
  alone can flip at the far tails when the two variances differ).
- Samples not seen in an epoch keep their previous decision.
- Even with clean labels the fit usually drops a few percent: the losses of a well-fitted class
  have a long right tail, which the second component takes.
- Label correction (``correct=True``): a sample whose margin-free prediction disagrees with its
  label with probability above ``confidence``, for ``patience`` epochs running (every time it was
  seen in each of them, always the same class), is relabelled to that class (and kept).

Under DDP every rank records its own samples; :meth:`LossGate.fit` sums the records over the ranks
(``spkemb.utils.distributed.all_reduce``, a collective: call it on every rank), so the decisions are
the same everywhere. The state is a set of buffers (a module's ``state_dict``), so a method that
owns the gate checkpoints it with itself and a resumed run continues with the same masks.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from torch import nn

from spkemb.options import Options, opt
from spkemb.utils import distributed as dist_

__all__ = ["GateOptions", "GateSummary", "LossGate", "gate_losses"]


@dataclass
class GateOptions(Options):
    """The loss gate and label correction (``method_options.gate`` of finetuning); see the module
    docstring. ``bic_check=False`` always splits, as DivideMix does (for small data, where a network
    fits the wrong labels too and their losses never form a mode)."""

    threshold: float = opt(0.5, "keep an item when P(low-loss component | loss) exceeds this")
    min_samples: int = opt(32, "an epoch with fewer items seen keeps everything")
    seed: int = opt(0, "random_state of the mixture fits")
    reg_covar: float = opt(5e-4, "the mixture's variance floor, on losses scaled to [0, 1] (DivideMix's 5e-4)")
    warmup_epochs: int = opt(1, "epochs whose fits keep everything and correct nothing")
    bic_check: bool = opt(
        True,
        "keep everything in an epoch whose losses one Gaussian explains better than two (false: always split, "
        "as DivideMix)",
    )
    correct: bool = opt(False, "label correction: relabel items confidently predicted as another speaker")
    confidence: float = opt(0.9, "the probability a correcting prediction must exceed")
    patience: int = opt(2, "epochs running a prediction must disagree before relabelling")

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold: must be in [0, 1) (got {self.threshold})")
        if not 0.0 < self.confidence <= 1.0:
            raise ValueError(f"confidence: must be in (0, 1] (got {self.confidence})")
        for name, low in (("min_samples", 2), ("patience", 1), ("warmup_epochs", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name}: must be at least {low} (got {getattr(self, name)})")
        if self.reg_covar <= 0:
            raise ValueError(f"reg_covar: must be positive (got {self.reg_covar})")


@dataclass
class GateSummary:
    """What one :meth:`LossGate.fit` decided, for metrics.jsonl (``as_dict``)."""

    epoch: int
    seen: int  # samples recorded this epoch
    kept: int  # of those, kept for the next epoch
    kept_fraction: float  # kept / seen (1.0 when none was seen)
    corrected: int  # labels changed this epoch
    gated: bool  # False when the epoch was degenerate and everything was kept
    low_mean: float  # the mixture's component means (nan when not gated)
    high_mean: float

    def as_dict(self) -> dict[str, float]:
        return {f"gate_{k}": float(v) for k, v in asdict(self).items()}


class LossGate(nn.Module):
    """Per-sample keep mask and (optionally corrected) labels for ``n`` training items.

    ``labels`` ``(n,)``: the items' initial labels (ints >= 0). During an epoch call
    :meth:`record` with each batch's item indices and per-sample losses (and, for label correction,
    the margin-free predictions and their probabilities); at its end call :meth:`fit`. Use
    :meth:`keep` for the loss mask and ``gate.labels[indices]`` as the targets. Before the first
    fit everything is kept.
    """

    labels: torch.Tensor
    kept: torch.Tensor
    count: torch.Tensor
    loss_sum: torch.Tensor
    disagree: torch.Tensor
    cand_sum: torch.Tensor
    cand_sq: torch.Tensor
    streak: torch.Tensor
    streak_class: torch.Tensor
    epochs_fitted: torch.Tensor
    corrected_total: torch.Tensor

    def __init__(self, labels: torch.Tensor | np.ndarray | list[int], options: GateOptions | None = None) -> None:
        super().__init__()
        self.options = options or GateOptions()
        lab = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
        if lab.numel() and int(lab.min()) < 0:
            raise ValueError("labels must be >= 0")
        n = lab.numel()
        self.register_buffer("labels", lab.clone())
        self.register_buffer("kept", torch.ones(n, dtype=torch.bool))
        # this epoch's records, summed (so that an all-reduce over ranks combines them)
        self.register_buffer("count", torch.zeros(n, dtype=torch.long))
        self.register_buffer("loss_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("disagree", torch.zeros(n, dtype=torch.long))  # confident, not the label
        self.register_buffer("cand_sum", torch.zeros(n, dtype=torch.long))  # sum and sum of squares of
        self.register_buffer("cand_sq", torch.zeros(n, dtype=torch.long))  # those predictions
        self.register_buffer("streak", torch.zeros(n, dtype=torch.long))
        self.register_buffer("streak_class", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("epochs_fitted", torch.zeros((), dtype=torch.long))
        self.register_buffer("corrected_total", torch.zeros((), dtype=torch.long))

    @property
    def n_items(self) -> int:
        return int(self.labels.numel())

    @torch.no_grad()
    def record(
        self,
        indices: torch.Tensor,
        losses: torch.Tensor,
        pred: torch.Tensor | None = None,
        conf: torch.Tensor | None = None,
    ) -> None:
        """Add one batch: item ``indices`` ``(B,)`` with per-sample ``losses`` ``(B,)``; ``pred`` and
        ``conf`` ``(B,)``: predicted class and its probability (needed for label correction). An item
        recorded several times in an epoch (several views, or repeats) gets the mean of its losses."""
        idx = indices.reshape(-1).long().to(self.count.device)
        if losses.numel() != idx.numel():
            raise ValueError(f"{idx.numel()} indices but {losses.numel()} losses")
        self.count.index_add_(0, idx, torch.ones_like(idx))
        self.loss_sum.index_add_(0, idx, losses.detach().reshape(-1).to(self.loss_sum))
        if pred is None or conf is None:
            return
        p = pred.reshape(-1).long().to(idx.device)
        wrong = (conf.reshape(-1).to(idx.device) > self.options.confidence) & (p != self.labels[idx])
        self.disagree.index_add_(0, idx, wrong.long())
        self.cand_sum.index_add_(0, idx, p * wrong)
        self.cand_sq.index_add_(0, idx, p * p * wrong)

    def keep(self, indices: torch.Tensor) -> torch.Tensor:
        """Bool mask ``(B,)``: which of these items the loss should use (on ``indices``' device)."""
        return self.kept[indices.long().to(self.kept.device)].to(indices.device)

    @torch.no_grad()
    def fit(self, reduce: bool = True) -> GateSummary:
        """End of an epoch: combine the ranks' records, decide the next epoch's mask (and
        corrections), clear the records. Every rank must call it (a collective under DDP).
        ``reduce=False``: the records are already global (every rank recorded every rank's samples,
        which keeps the buffers identical on all ranks, so a checkpoint of rank 0 resumes exactly)."""
        for buf in (self.count, self.loss_sum, self.disagree, self.cand_sum, self.cand_sq):
            if reduce:
                dist_.all_reduce(buf)
        seen = self.count > 0
        idx = torch.nonzero(seen).flatten()
        losses = (self.loss_sum[idx] / self.count[idx]).cpu().numpy()
        epoch = int(self.epochs_fitted)
        corrected, gated, means = 0, False, (float("nan"), float("nan"))
        if epoch >= self.options.warmup_epochs:
            keep_seen, gated, means = gate_losses(losses, self.options)
            self.kept[idx] = torch.from_numpy(keep_seen).to(self.kept.device)
            corrected = self._correct(seen) if self.options.correct else 0
        self.epochs_fitted += 1
        self.corrected_total += corrected
        n_seen, n_kept = int(idx.numel()), int(self.kept[idx].sum())
        for buf in (self.count, self.loss_sum, self.disagree, self.cand_sum, self.cand_sq):
            buf.zero_()
        return GateSummary(
            epoch=epoch,
            seen=n_seen,
            kept=n_kept,
            kept_fraction=n_kept / n_seen if n_seen else 1.0,
            corrected=corrected,
            gated=gated,
            low_mean=means[0],
            high_mean=means[1],
        )

    def _correct(self, seen: torch.Tensor) -> int:
        """Advance the disagreement streaks of the items seen this epoch; relabel those at ``patience``."""
        d = self.disagree.clamp_min(1)
        same_class = self.cand_sq * d == self.cand_sum * self.cand_sum  # all disagreeing predictions equal
        verdict = seen & (self.disagree == self.count) & same_class
        cand = torch.where(verdict, self.cand_sum // d, torch.full_like(d, -1))
        grown = torch.where(verdict & (self.streak_class == cand), self.streak + 1, verdict.long())
        self.streak.copy_(torch.where(seen, grown, self.streak))
        self.streak_class.copy_(torch.where(seen, cand, self.streak_class))
        flip = verdict & (self.streak >= self.options.patience)
        self.labels[flip] = cand[flip]
        self.kept[flip] = True
        self.streak[flip] = 0
        self.streak_class[flip] = -1
        return int(flip.sum())

    def extra_repr(self) -> str:
        return f"n_items={self.n_items}, options={self.options}"


def gate_losses(losses: np.ndarray, options: GateOptions) -> tuple[np.ndarray, bool, tuple[float, float]]:
    """``(keep mask, gated, (low mean, high mean))`` for one epoch's per-sample losses (see the module
    docstring for the rules). As in DivideMix (Li et al. 2020), the losses are min-max scaled to
    [0, 1] and the mixture's variances floored (``reg_covar``), so the low-loss component cannot
    shrink onto the many near-zero losses and leave the rest of the clean ones to the other."""
    x = np.asarray(losses, dtype=np.float64).reshape(-1)
    keep_all = np.ones(len(x), dtype=bool)
    nan = (float("nan"), float("nan"))
    if len(x) < options.min_samples or not np.isfinite(x).all():
        return keep_all, False, nan
    lo, span = float(x.min()), float(np.ptp(x))
    if span <= 1e-8 * (1.0 + abs(lo)):
        return keep_all, False, nan
    z = ((x - lo) / span).reshape(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one = GaussianMixture(1, reg_covar=options.reg_covar, random_state=options.seed).fit(z)
        two = GaussianMixture(2, reg_covar=options.reg_covar, random_state=options.seed).fit(z)
    if options.bic_check and two.bic(z) >= one.bic(z):
        return keep_all, False, nan
    means = two.means_.ravel()
    low, high = int(np.argmin(means)), int(np.argmax(means))
    post = two.predict_proba(z)[:, low]
    zz = z.ravel()
    keep = (zz <= means[low]) | ((post > options.threshold) & (zz < means[high]))
    return keep, True, (lo + span * float(means[low]), lo + span * float(means[high]))
