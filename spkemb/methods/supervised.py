"""Supervised finetuning on speaker labels (real ones, or pseudo-labels from ``spkemb cluster``).

Every item is ``n_crops`` augmented crops of one utterance, batched P speakers x K items by the
finetune job. The loss is one of

* ``aam``: additive angular margin softmax (ArcFace) on every crop, scale 30, margin 0.2 reached
  by a warm-up (:class:`~spkemb.losses.aam.MarginScheduler`, WeSpeaker's exponential ramp);
* ``subcenter-aam``: the same with ``subcenters`` weight vectors per class (optionally dropping
  crops far from their class's dominant sub-centre) and the inter-top-k penalty;
* ``supcon-aam``: supervised contrastive loss over the batch's crops, the positive pairs (same
  speaker) with an additive angular margin (Li et al. 2022);
* ``aam+supcon-aam``: AAM plus ``supcon_weight`` times SupCon-AAM.

Noisy labels (Miara et al. 2024): with ``loss_gate`` a 2-component Gaussian mixture is fitted to
the per-item losses at the end of every epoch, and the next epoch trains only on the low-loss
items (:class:`~spkemb.losses.gate.LossGate`, options ``gate``); ``gate.correct`` relabels items whose
prediction is confident and disagrees for ``gate.patience`` epochs. Both are logged (``gate_*``). The
gate's options were flat keys once (``gate_threshold``, ``label_correction``, ...): they are still
read, with a DeprecationWarning (``SupervisedOptions.renamed``).

The classifier head, the labels and the gate's state are part of the method's ``state_dict``, so
checkpoints resume exactly. Only the encoder is exported to ``encoder.pt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from spkemb.data.crops import ViewSpec
from spkemb.errors import InputError
from spkemb.losses.aam import AAMOutput, AAMSoftmax, MarginScheduler
from spkemb.losses.gate import GateOptions, LossGate
from spkemb.losses.subcenter import SubCenterAAM
from spkemb.losses.supcon_aam import AAMPlusSupCon, SupConAAM
from spkemb.methods.base import Method
from spkemb.methods.common import batch_views, device_of, embed_dim_of, flatten_views
from spkemb.methods.registry import register_method
from spkemb.options import Options, opt
from spkemb.utils.distributed import all_gather, all_reduce

__all__ = ["Supervised", "SupervisedOptions", "LOSSES"]

Loss = Literal["aam", "subcenter-aam", "supcon-aam", "aam+supcon-aam"]
LOSSES: tuple[str, ...] = get_args(Loss)


@dataclass
class SupervisedOptions(Options):
    """Options of supervised finetuning (``method_options`` of ``spkemb finetune``)."""

    loss: Loss = opt("aam", "aam | subcenter-aam | supcon-aam | aam+supcon-aam")
    n_classes: int = opt(0, "speakers (set by the finetune job from the labels)")
    margin: float = opt(0.2, "additive angular margin, reached after the warm-up")
    scale: float = opt(30.0, "logit scale s")
    margin_hold_steps: int = opt(0, "steps at margin 0 before the margin warm-up")
    margin_ramp_steps: int = opt(0, "steps of the exponential margin warm-up (0: the full margin at once)")
    subcenters: int = opt(3, "sub-centres per class (subcenter-aam)")
    drop_outliers_after: int | None = opt(
        None, "subcenter-aam: from this step, drop crops far from their class's dominant sub-centre"
    )
    topk: int = opt(0, "inter-top-k penalty: hardest negative classes given an extra margin (0: off; 5)")
    topk_margin: float = opt(0.06, "the extra margin of the inter-top-k penalty")
    supcon_weight: float = opt(1.0, "weight of SupCon-AAM in aam+supcon-aam")
    supcon_scale: float = opt(
        10.0,
        "SupCon-AAM's scale, 1 / temperature (SupCon's usual 0.1; the AAM's 30 "
        "gave 18.0 % EER against 4.7 % on LibriSpeech)",
    )
    n_crops: int = opt(2, "augmented crops per utterance (SupCon views; AAM sees each)")
    crop_seconds: float = opt(2.0, "length of each crop")
    items_per_speaker: int = opt(1, "K of the P x K batches (P = batch_size // K)")
    speed_as_speaker: bool = opt(
        True,
        "with speed perturbation (data option speed), each speed factor is a class of its own (x3 speakers "
        "at 0.9/1.0/1.1), as the Kaldi and WeSpeaker recipes do; false: a sped-up item keeps its speaker",
    )
    speed_variants: int = opt(1, "speed factors that are classes of their own (set by the finetune job)")
    freeze_encoder_steps: int = opt(0, "train only the classifier head for this many first steps")
    freeze_frontend_steps: int = opt(
        0,
        "run the encoder's pretrained frontend frozen (no gradients, no dropout) "
        "for this many first steps, so its pooling and the head learn first "
        "(wavlm-mhfa)",
    )
    encoder_lr_scale: float = opt(1.0, "the encoder's learning rate relative to the head's (e.g. 0.1)")
    layer_decay: float = opt(1.0, "layer-wise lr decay for encoders with `layers()` (deep frontends)")
    loss_gate: bool = opt(False, "train each epoch only on the low-loss items of the previous one")
    gate: GateOptions = opt(GateOptions(), "the loss gate and label correction (gate.correct)")

    renamed: ClassVar[dict[str, str]] = {
        "gate_threshold": "gate.threshold", "gate_warmup_epochs": "gate.warmup_epochs",
        "gate_bic_check": "gate.bic_check", "label_correction": "gate.correct",
        "correction_confidence": "gate.confidence", "correction_patience": "gate.patience", "seed": "gate.seed",
    }  # fmt: skip

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss: must be one of {', '.join(LOSSES)} (got {self.loss!r})")
        if self.n_crops < 1:
            raise ValueError(f"n_crops: must be at least 1 (got {self.n_crops})")
        if self.loss in ("supcon-aam", "aam+supcon-aam") and self.n_crops < 2 and self.items_per_speaker < 2:
            raise ValueError("n_crops: supcon losses need positives: n_crops >= 2 or items_per_speaker >= 2")
        if self.items_per_speaker < 1:
            raise ValueError(f"items_per_speaker: must be at least 1 (got {self.items_per_speaker})")
        if self.crop_seconds <= 0:
            raise ValueError(f"crop_seconds: must be positive (got {self.crop_seconds})")
        if self.loss_gate and self.loss == "supcon-aam":
            raise ValueError("loss_gate: the loss gate needs a classifier loss (aam, subcenter-aam or aam+supcon-aam)")
        if self.speed_variants < 1:
            raise ValueError(f"speed_variants: must be >= 1, got {self.speed_variants}")
        if self.supcon_scale <= 0:
            raise ValueError(f"supcon_scale: must be > 0 (got {self.supcon_scale})")
        if not 0 < self.encoder_lr_scale:
            raise ValueError(f"encoder_lr_scale: must be > 0 (got {self.encoder_lr_scale})")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay: must be in (0, 1] (got {self.layer_decay})")


@register_method("supervised", kind="finetune")
class Supervised(Method):
    """Encoder + a speaker classifier (or SupCon) trained on labels; see the module docstring.

    ``labels`` ``(n_items,)`` are the class of each dataset item (its manifest row), looked up with
    the batch's ``index``. Logged: ``loss``, ``aam``/``supcon`` parts, ``acc`` (margin-free),
    ``margin``, ``kept`` (fraction of the batch the gate kept) and, per epoch, ``gate_*``.
    """

    Options = SupervisedOptions
    labels: Tensor

    def __init__(
        self,
        encoder: nn.Module,
        options: SupervisedOptions | None = None,
        labels: Any = None,
        names: tuple[Sequence[str], Sequence[str]] | None = None,
        **kwargs: Any,
    ) -> None:
        """``names``: the items' ids and the classes' names, for messages (a resume with other labels)."""
        super().__init__()
        self.names = names
        o = self.options = self.resolve(options, kwargs)
        if labels is None:
            raise ValueError("supervised finetuning needs labels (one class per item)")
        lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        n_classes = o.n_classes or int(lab.max()) + 1
        if o.n_classes == 0:
            self.options = o = o.replace(n_classes=n_classes)
        self.encoder = encoder
        self.register_buffer("labels", lab.clone())
        dim = embed_dim_of(encoder)
        self.head = self._make_head(o, dim)
        self.schedule = MarginScheduler(final=o.margin, hold=o.margin_hold_steps, ramp=o.margin_ramp_steps)
        self.gate = LossGate(lab, o.gate) if o.loss_gate or o.gate.correct else None
        self.crops_per_item = o.n_crops
        self.current_margin = self.schedule(0)
        self.last_gate: dict[str, float] = {}
        if o.freeze_frontend_steps and not callable(getattr(encoder, "set_frontend_frozen", None)):
            raise ValueError(
                f"freeze_frontend_steps needs an encoder with a pretrained frontend (wavlm-mhfa), not "
                f"{type(encoder).__name__}; freeze_encoder_steps holds the whole encoder"
            )
        self.ddp_find_unused_parameters = (
            o.freeze_encoder_steps > 0 or o.freeze_frontend_steps > 0 or o.loss == "subcenter-aam"
        )

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load a checkpoint; one trained on other labels (an item of another class) raises InputError
        naming the first changed item: its classifier head and the new labels would disagree."""
        old = state_dict.get("labels")
        if old is not None:
            self._same_labels(torch.as_tensor(old).cpu().long())
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _same_labels(self, old: Tensor) -> None:
        new = self.labels.cpu()
        if old.shape == new.shape and torch.equal(old, new):
            return
        if old.shape != new.shape:
            what = f"it has {old.numel()} labelled items, these labels {new.numel()}"
        else:
            changed = torch.nonzero(old != new).reshape(-1)
            i = int(changed[0])
            items, classes = self.names if self.names is not None else ([], [])
            item = repr(items[i]) if i < len(items) else f"item {i}"
            now = repr(classes[int(new[i])]) if int(new[i]) < len(classes) else f"class {int(new[i])}"
            what = (
                f"{changed.numel()} of {new.numel()} items have another class (the first: {item}, class "
                f"{int(old[i])} then, {now} now)"
            )
        raise InputError(
            f"`resume`: the checkpoint was trained on other labels ({what}); resume with the labels it was "
            "trained on, or start again with `overwrite`"
        )

    @staticmethod
    def _make_head(o: SupervisedOptions, dim: int) -> nn.Module:
        o = o.replace(n_classes=o.n_classes * o.speed_variants)  # each speed of a speaker its own class
        if o.loss == "supcon-aam":
            return SupConAAM(scale=o.supcon_scale, margin=o.margin)
        if o.loss == "subcenter-aam":
            sub = SubCenterAAM(
                dim,
                o.n_classes,
                margin=o.margin,
                scale=o.scale,
                subcenters=o.subcenters,
                topk=o.topk,
                topk_margin=o.topk_margin,
            )
            sub.reduce_counts = all_reduce
            return sub
        aam: AAMSoftmax
        if o.topk:
            aam = SubCenterAAM(
                dim, o.n_classes, margin=o.margin, scale=o.scale, subcenters=1, topk=o.topk, topk_margin=o.topk_margin
            )
        else:
            aam = AAMSoftmax(dim, o.n_classes, margin=o.margin, scale=o.scale)
        if o.loss == "aam+supcon-aam":
            return AAMPlusSupCon(aam, SupConAAM(scale=o.supcon_scale, margin=o.margin), o.supcon_weight)
        return aam

    @staticmethod
    def views(o: SupervisedOptions) -> ViewSpec:
        return [(int(o.n_crops), float(o.crop_seconds))]

    # -- optimiser groups and schedules ---------------------------------------------------------

    def param_groups(self) -> list[dict[str, Any]]:
        """The head at the full lr; the encoder at ``encoder_lr_scale`` (with layer-wise decay when
        the encoder lists its ``layers()`` bottom-up)."""
        o = self.options
        enc_params = list(self.encoder.parameters())
        layers_fn = getattr(self.encoder, "layers", None)
        groups: list[dict[str, Any]] = []
        if callable(layers_fn) and o.layer_decay < 1.0:
            layers = list(layers_fn())
            seen: set[int] = set()
            for depth, layer in enumerate(layers):
                ps = [p for p in layer.parameters() if id(p) not in seen]
                seen.update(id(p) for p in ps)
                scale = o.encoder_lr_scale * o.layer_decay ** (len(layers) - 1 - depth)
                groups.append({"params": ps, "lr_scale": scale})
            rest = [p for p in enc_params if id(p) not in seen]
            groups.append({"params": rest, "lr_scale": o.encoder_lr_scale})
        else:
            groups.append({"params": enc_params, "lr_scale": o.encoder_lr_scale})
        head = [p for n, p in self.named_parameters() if not n.startswith("encoder.")]
        groups.append({"params": head, "lr_scale": 1.0})
        return groups

    def on_step_start(self, step: int) -> None:
        self.current_margin = self.schedule.apply(self.head, step)  # type: ignore[arg-type]
        if self.options.freeze_encoder_steps:
            self._hold_batch_norms(step < self.options.freeze_encoder_steps)
        if self.options.freeze_frontend_steps:
            frozen = step < self.options.freeze_frontend_steps
            if getattr(self.encoder, "frontend_frozen", None) != frozen:
                self.encoder.set_frontend_frozen(frozen)  # type: ignore[operator]
        if isinstance(self.head, SubCenterAAM) and self.options.drop_outliers_after is not None:
            self.head.drop_outliers = step >= self.options.drop_outliers_after

    def _hold_batch_norms(self, frozen: bool) -> None:
        """While the encoder is held still, its batch norms use (and do not update) their running
        statistics: a frozen encoder's embeddings must stay those of the encoder it started from."""
        for m in self.encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):  # noqa: SLF001 - every BatchNorm*d
                m.train(self.training and not frozen)

    def before_optimizer_step(self, step: int) -> None:
        """Hold the encoder still for the first ``freeze_encoder_steps`` (the new head learns first)."""
        if step < self.options.freeze_encoder_steps:
            for p in self.encoder.parameters():
                p.grad = None

    def on_epoch_start(self, epoch: int) -> None:
        """Fit the loss gate on the records of the epochs not yet fitted (a collective under DDP)."""
        if self.gate is None or epoch <= int(self.gate.epochs_fitted):
            return
        summary = self.gate.fit(reduce=False)  # the records are global already (see _record)
        self.last_gate = summary.as_dict()

    # -- the loss ---------------------------------------------------------------------------------

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        views, index = batch_views(batch, device_of(self))
        if index is None:
            raise ValueError("supervised finetuning needs the batch's item index")
        v = views[0]
        b, n = v.shape[0], v.shape[1]
        z = self.encoder(flatten_views(v)).reshape(n, b, -1).transpose(0, 1)  # (B, V, D)
        labels = (self.gate.labels if self.gate is not None else self.labels)[index]
        speed = batch.get("speed") if isinstance(batch, dict) else None
        if self.options.speed_variants > 1 and speed is not None:  # speaker s at speed v: class s + v * n
            labels = labels + self.options.n_classes * speed.to(labels.device)
        keep = self.gate.keep(index) if self.gate is not None else None
        logs: dict[str, float] = {"margin": float(self.current_margin)}
        if isinstance(self.head, SupConAAM):
            zz, ll = self._gathered(z, labels)
            loss = self.head(zz.reshape(-1, zz.shape[-1]), ll.repeat_interleave(zz.shape[1]))
            parts: dict[str, Tensor] = {"supcon": loss.detach()}
        elif isinstance(self.head, AAMPlusSupCon):
            zk, lk = (z, labels) if keep is None else (z[keep], labels[keep])
            zz, ll = self._gathered(zk, lk)
            loss, parts, out, per_item = self.head.detailed(z, labels, keep, supcon_z=zz, supcon_labels=ll)
            self._record(index, per_item, out, n)
        else:
            assert isinstance(self.head, AAMSoftmax)
            row_keep = None if keep is None else keep.repeat_interleave(n)
            out = self.head.detailed(z.reshape(b * n, -1), labels.repeat_interleave(n), row_keep)
            loss, parts = out.loss, {"acc": out.acc}
            self._record(index, out.per_sample.reshape(b, n).mean(dim=1), out, n)
        logs["loss"] = float(loss.detach().item())
        logs.update({k: float(t.item()) for k, t in parts.items()})
        if keep is not None:
            logs["kept"] = float(keep.float().mean().item())
        if self.last_gate:
            logs.update(self.last_gate)
            self.last_gate = {}
        return loss, logs

    def _gathered(self, z: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``z`` and ``labels`` from every rank (the gradient flows back to this rank's rows)."""
        return all_gather(z.contiguous(), grad=True), all_gather(labels)

    def _record(self, index: Tensor, per_item: Tensor, out: AAMOutput, n_views: int) -> None:
        if self.gate is None or not self.training:
            return
        b = index.shape[0]
        pred = out.pred.reshape(b, n_views)[:, 0] % self.options.n_classes  # the speaker, at any speed
        conf = out.conf.reshape(b, n_views).min(dim=1).values
        # every rank records every rank's items: the gate's buffers stay identical on all ranks
        rows = torch.stack([index.double(), per_item.detach().double(), pred.double(), conf.detach().double()], 1)
        rows = all_gather(rows)
        self.gate.record(rows[:, 0].long(), rows[:, 1], rows[:, 2].long(), rows[:, 3])
