"""The contract between a training method (moco, simclr, cel, dino, supervised) and the Trainer.

A method is an ``nn.Module`` that owns every network and every piece of state it trains with,
and turns one batch into one loss. The :class:`~spkemb.train.trainer.Trainer` owns everything
else: device, precision, DDP, optimiser, schedule, checkpoints, logging and the data order.

What a method provides
----------------------
``encoder``
    The speaker encoder (waveform or features -> embedding) that training produces. The trainer
    does not touch it itself; the command's ``export_encoder`` callable writes it to
    ``encoder.pt`` at the end.
``forward(batch) -> (loss, logs)``
    ``batch`` is whatever the command's collate function made (tensors, or dicts/lists/tuples of
    tensors), already moved to the training device. Return a scalar loss tensor (the trainer calls
    ``backward`` on it) and a dict of Python floats to log (``{"acc": 0.93}``; use
    ``tensor.item()``, keep it small: it is averaged over the log interval and written to
    metrics.jsonl). Do not call ``backward``, ``optimizer.step`` or ``zero_grad``.
    ``forward`` runs under ``torch.autocast`` when the precision is bf16/fp16; run numerically
    sensitive parts (softmax over many logits, log-sum-exp) in float32 (see
    ``spkemb.losses._common.float32_region``).
``after_step(step, total_steps)``
    Called once after every optimiser step, on the unwrapped module, with ``step`` = the number
    of steps taken so far (1 after the first) and ``total_steps`` = ``max_steps`` or ``None`` when
    only a time budget bounds the run. For EMA teacher / key-encoder updates, momentum schedules,
    queue and centre updates that must see the updated student. Default: nothing.
    For schedules, ``self.progress`` (set by the trainer before every ``forward``, in [0, 1]) is
    the fraction of the run done, also meaningful for time-bounded runs.

``on_epoch_start(epoch)``
    Called on every rank before the first batch of each epoch of the data (0 for the first; after a
    resume, for the epoch the run resumes in, even mid-epoch). For per-epoch work: refitting a loss
    gate, updating pseudo-label corrections. Default: nothing.
``on_step_start(step)``
    Called before every ``forward``, with ``step`` = the steps taken so far (0 before the first).
    For step schedules that must be set before the loss (an AAM margin warm-up). Default: nothing.

``before_optimizer_step(step)``
    Called after ``backward`` (gradients all-reduced, unscaled and clipped) and before the
    optimiser step, on the unwrapped module, with ``step`` = the steps taken before this one (0
    for the first). To hold parameters still for a while, set their ``.grad`` to ``None``: the
    optimiser then leaves them alone (DINO's last layer in its first steps). Default: nothing.

Options and registration
------------------------
A method states its options once, as a dataclass (``Options``, a subclass of
:class:`spkemb.options.Options` with ``help`` per field and checks in ``__post_init__``), takes
``(encoder, options=None, **kwargs)`` (``self.resolve`` builds the options from either) and is
registered by name with ``@register_method("name")`` (:mod:`spkemb.methods.registry`). ``views``
(a static method of the options) says which crops the data must make, and ``method.crop_views()``
says it of a built method; ``config`` (the name plus the
options) is saved with the encoder. ``kind`` is ``"pretrain"`` (no labels) or ``"finetune"``.

State and checkpoints
---------------------
Everything a method carries from one step to the next must be in its ``state_dict``: parameters,
or buffers registered with ``register_buffer`` (persistent). A queue pointer, a centre, an EMA
copy: tensors, never plain Python attributes, or a resumed run will not be the run that was
never interrupted. Frozen networks (EMA teacher, MoCo key encoder) are parameters with
``requires_grad=False`` (see :func:`freeze`); the optimiser only gets parameters that require
gradients.

Randomness: use the global torch generator (e.g. ``torch.rand``, dropout) freely; its state is
checkpointed per rank. Do not create unseeded generators of your own.

Distributed training (DDP under torchrun)
-----------------------------------------
* The trainer wraps the method in ``DistributedDataParallel``; ``forward`` is called through the
  wrapper, ``after_step`` on the method itself. At wrap time all parameters (frozen ones too) and
  buffers are broadcast from rank 0, so every rank starts identical.
* Buffers are **not** re-broadcast before each forward (``forward_sync_buffers`` is off unless
  the class sets ``ddp_sync_buffers = True``): a method must keep its own buffers identical on all
  ranks. Build them from data every rank sees: enqueue ``concat_all_gather(keys)`` rather than the
  local keys, update a DINO centre with ``all_reduce(batch_centre, "mean")``. EMA updates from the
  (all-reduced, hence identical) student weights stay identical by themselves. BatchNorm running
  statistics stay per-rank; rank 0's are the ones saved and exported.
* Collective calls (``spkemb.utils.distributed.all_gather``, ``all_reduce``) may be made in
  ``forward``, ``on_step_start``, ``on_epoch_start`` and ``after_step``: every rank runs them for the
  same steps, in the same order (a step whose batch lost all its items on any rank is skipped on every
  rank). Batches may differ by a few items between ranks when a dataset returned ``None`` for
  unreadable items: ``concat_all_gather`` handles uneven sizes, and a queue must accept an enqueue
  of any size (wrap around rather than assert ``queue_size % batch == 0``).
* Set ``ddp_find_unused_parameters = True`` on the class when some trainable parameters get no
  gradient in some steps (DDP otherwise stops with an error).
* Alone (no torchrun) the collectives return their input, so one code path serves both.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from spkemb.options import Options as OptionsBase


class Method(nn.Module):
    """Base class of the training methods; see the module docstring for the contract."""

    encoder: nn.Module
    #: the options dataclass of the method (set by every subclass)
    Options: ClassVar[type[OptionsBase]] = OptionsBase
    #: the name it is registered under (set by ``register_method``)
    method_name: ClassVar[str] = ""
    #: ``pretrain`` (self-supervised) or ``finetune`` (trained on labels)
    kind: ClassVar[str] = "pretrain"
    options: Any
    #: the fraction of the run done, in [0, 1] (set by the trainer before every ``forward``)
    progress: float
    #: how many crops (encoder inputs) one dataset item becomes; for the crops/s throughput figure
    crops_per_item: int = 1
    #: re-broadcast buffers from rank 0 before every forward under DDP (off: the method syncs them)
    ddp_sync_buffers: bool = False
    #: let DDP tolerate trainable parameters without a gradient in a step
    ddp_find_unused_parameters: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.progress = 0.0  # set by the trainer before every forward: fraction of the run done

    @classmethod
    def resolve(cls, options: Any | None, kwargs: dict[str, Any]) -> Any:
        """The options from an options object and/or keyword overrides (``ValueError`` for a bad value)."""
        if options is None:
            return cls.Options(**kwargs)
        return options.replace(**kwargs) if kwargs else options

    @property
    def config(self) -> dict[str, Any]:
        """``{"name": ..., **options}``: what rebuilds the method, saved with the encoder."""
        return {"name": self.method_name, **self.options.to_dict()}

    @staticmethod
    def views(options: Any) -> list[tuple[int, float]]:  # pragma: no cover - abstract
        """The crops one dataset item must become: ``[(n_crops, seconds), ...]`` per group."""
        raise NotImplementedError

    def crop_views(self) -> list[tuple[int, float]]:
        """The crops this method trains on: its :meth:`views` of its own options."""
        return type(self).views(self.options)

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, float]]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch) -> (loss, logs)")

    def after_step(self, step: int, total_steps: int | None) -> None:
        """Called after each optimiser step (``step`` = steps taken). Default: nothing."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first batch of each epoch (and of a resumed one). Default: nothing."""

    def on_step_start(self, step: int) -> None:
        """Called before each ``forward`` (``step`` = steps taken). Default: nothing."""

    def before_optimizer_step(self, step: int) -> None:
        """Called between ``backward`` and the optimiser step (``step`` = steps taken). Default: nothing."""


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter of ``module`` (an EMA teacher or key encoder)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * source`` for parameters; buffers
    (e.g. BatchNorm statistics) are copied from ``source``. The two modules must match in structure."""
    for p, q in zip(target.parameters(), source.parameters(), strict=True):
        p.lerp_(q.detach(), 1.0 - momentum)
    for b, c in zip(target.buffers(), source.buffers(), strict=True):
        b.copy_(c)
