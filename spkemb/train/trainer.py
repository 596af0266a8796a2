"""The one Trainer behind ``pretrain`` and ``finetune``.

It takes a :class:`~spkemb.methods.base.Method` (which turns a batch into a loss; its contract is
in :mod:`spkemb.methods.base`), a dataset, a
collate function and a :class:`~spkemb.train.config.TrainConfig`, and runs the steps: device and
precision, DDP under torchrun, optimiser, warm-up + cosine schedule, gradient clipping,
checkpoints and bit-for-bit resume, metrics.jsonl. What the user sees goes through a
:class:`~spkemb.train.report.Reporter` (silent by default). At the end it hands ``OUT/encoder.pt``
to the command's ``export_encoder`` callable.

The experiment folder (only rank 0 writes)::

    OUT/config.yaml          the effective configuration
    OUT/checkpoints/         step-{N:08d}.pt, the newest ``keep_checkpoints``
    OUT/metrics.jsonl        {step, epoch, loss, lr, crops_per_s, elapsed, skipped_items, <method logs>}
    OUT/encoder.pt           written by export_encoder

A folder that already holds checkpoints or an ``encoder.pt`` is refused unless resuming
(``resume``: continue from the newest checkpoint that loads, a corrupt newest one reported and
skipped, metrics lines past it dropped) or ``overwrite``. Checkpoints are written every
``checkpoint_every`` steps and every ``checkpoint_minutes``, so a kill -9 loses at most that much.
SIGINT or SIGTERM finish the current step, write a checkpoint and raise :class:`TrainingInterrupted`
(a second signal stops at once). A NaN/inf loss stops the run with :class:`WorkError` and writes
nothing more. Dataset items that are ``None`` are dropped (``skipped_items`` in the metrics).

Resume is bit-for-bit (same final weights as a run never interrupted) when the settings that
shape training are unchanged, the number of processes is the same, the dataset derives its
randomness from :func:`spkemb.data.sampler.item_rng`, the method keeps its state in its
state_dict, the run is bounded by ``max_steps`` (a time budget depends on the clock), and the
kernels are deterministic (CPU; on CUDA, cuDNN's and atomics' nondeterminism aside). Under torchrun
every rank reads the checkpoint that rank 0 picked, so the experiment folder must be on a file
system all ranks see.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from spkemb.data.sampler import ResumableSampler
from spkemb.errors import InputError, WorkError
from spkemb.methods.base import Method
from spkemb.train.batching import CollatedBatch, SkipNoneCollate, skip_none_collate, to_device
from spkemb.train.checkpoint import CHECKPOINT_DIR, capture_rng, save_checkpoint
from spkemb.train.config import TrainConfig, config_dict, dump_config
from spkemb.train.optim import build_optimizer, compile_encoder, limit_cpu_threads, seed_everything, set_lr
from spkemb.train.report import MetricsWindow, Reporter, StepReport
from spkemb.train.resume import pick_checkpoint, restore_state, trim_metrics
from spkemb.train.schedule import lr_at, progress
from spkemb.utils import distributed as dist_
from spkemb.utils.locking import output_lock
from spkemb.utils.runtime import check_precision, resolve_precision, worker_init

__all__ = [
    "Trainer",
    "TrainingInterrupted",
    "BatchSampler",
    "seed_everything",
    "skip_none_collate",
    "to_device",
    "CollatedBatch",
]


class TrainingInterrupted(WorkError):
    """SIGINT/SIGTERM stopped the run after a checkpoint; ``step`` and ``checkpoint`` say where."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint"
        super().__init__(f"interrupted at step {step}; {where} written")


class BatchSampler(Protocol):
    """What the Trainer needs of a batch sampler (:class:`~spkemb.data.sampler.ResumableSampler`)."""

    epoch: int
    consumed: int
    batches_per_epoch: int

    def __iter__(self) -> Any: ...
    def mark_consumed(self, n: int = 1) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


#: ``(n_items, batch_size, seed, rank, world) -> sampler``; the default makes a ResumableSampler
SamplerFactory = Callable[[int, int, int, int, int], BatchSampler]


def world_line(world: int, batch_size: int, device: torch.device) -> str:
    """What a multi-process run tells the user once: processes, back-end, and the batch per step."""
    import torch.distributed as dist

    backend = dist.get_backend() if dist.is_initialized() else "no process group"
    return (
        f"distributed: {world} processes ({backend}, {device.type}); batch {batch_size} per process, "
        f"{batch_size * world} per step"
    )


def _default_sampler(n: int, batch_size: int, seed: int, rank: int, world: int) -> BatchSampler:
    return ResumableSampler(n, batch_size, seed, rank, world, drop_last=True)


@dataclass
class TrainState:
    """Where the run is: what a checkpoint restores and the metrics report."""

    step: int = 0
    base_elapsed: float = 0.0  # seconds trained before this process started
    skipped: int = 0  # unreadable items dropped so far
    last_saved: int = 0
    last_saved_elapsed: float = 0.0
    last_path: Path | None = None
    last_loss: float | None = None
    lr: float = 0.0
    t0: float = field(default_factory=time.monotonic)
    stop_requested: bool = False

    def elapsed(self) -> float:
        return self.base_elapsed + time.monotonic() - self.t0


class _StopOnSignal:
    """SIGINT/SIGTERM set a flag (the step finishes, a checkpoint is written); a second one stops at once."""

    def __init__(self, state: TrainState) -> None:
        self.state = state
        self.previous: dict[int, Any] = {}
        self.seen: set[int] = set()

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.state.stop_requested and signum in self.seen:  # the same signal again: stop now
            raise KeyboardInterrupt
        self.seen.add(signum)  # (torchrun answers a Ctrl-C with SIGTERM to its workers: not a second request)
        self.state.stop_requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Train ``method`` on ``dataset``; see the module docstring. One call to :meth:`fit` per run.

    ``reporter`` receives progress and messages (default: silent); ``sampler_factory`` makes the
    batch sampler (default: :class:`~spkemb.data.sampler.ResumableSampler`, e.g. a speaker-balanced
    sampler for finetuning).
    """

    def __init__(
        self,
        method: Method,
        dataset: Dataset,
        collate_fn: Callable[[list[Any]], Any] | None,
        cfg: TrainConfig,
        out_dir: str | Path,
        export_encoder: Callable[[Path], None] | None = None,
        reporter: Reporter | None = None,
        sampler_factory: SamplerFactory | None = None,
    ) -> None:
        self.method = method
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.export_encoder = export_encoder
        self.reporter = reporter or Reporter()
        self.sampler_factory = sampler_factory or _default_sampler
        self.state = TrainState()
        self.loader: DataLoader | None = None
        self.metrics: Any = None

    # -- the run ---------------------------------------------------------------------------

    def fit(self, resume: bool | None = None) -> dict[str, Any]:
        """Train until ``max_steps`` or ``max_minutes``; return a summary (also on --json)."""
        try:  # the values again, in case one was set by hand after the config was built
            cfg = self.cfg = self.cfg.replace()
        except ValueError as err:
            raise InputError(str(err)) from None
        resume = cfg.resume if resume is None else resume
        with contextlib.ExitStack() as stack:
            if int(os.environ.get("RANK", "0")) == 0:  # one writer per experiment folder (the group is not up yet)
                stack.enter_context(output_lock(self.out_dir, what="experiment folder"))
            return self._fit(resume)

    def _fit(self, resume: bool) -> dict[str, Any]:
        try:
            self._setup(resume)
            with _StopOnSignal(self.state):
                self._loop()
                self._log_line()
                if self.state.step > self.state.last_saved:
                    self._save()
        finally:
            self.reporter.end()
            if self.metrics is not None:
                self.metrics.close()
            self.loader = None  # shut persistent workers down now, also when an error is on its way up
        if self.state.stop_requested:
            raise TrainingInterrupted(self.state.step, self.state.last_path)
        encoder_path = None
        if self.main and self.export_encoder is not None:
            encoder_path = self.out_dir / "encoder.pt"
            self.export_encoder(encoder_path)
        dist_.barrier()
        return self._summary(encoder_path)

    def _setup(self, resume: bool) -> None:
        """Device, method, optimiser, sampler, loader; restore a checkpoint when resuming."""
        cfg = self.cfg
        self.device = dist_.setup(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)  # auto: bf16 where native, else fp32
        self.amp_dtype = check_precision(self.precision, self.device)
        limit_cpu_threads(self.device)
        self.rank, self.world = dist_.rank(), dist_.world_size()
        self.main = self.rank == 0
        ckpt_dir = self.out_dir / CHECKPOINT_DIR
        metrics_path = self.out_dir / "metrics.jsonl"
        self.ckpt_path, ckpt = pick_checkpoint(self.out_dir, ckpt_dir, resume, bool(cfg.overwrite), self.reporter)
        method = self.method.to(self.device)
        method.train()
        if cfg.compile:
            compile_encoder(method)
        self.optimizer = build_optimizer(method, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        try:
            n_items = len(self.dataset)  # type: ignore[arg-type]
            self.sampler = self.sampler_factory(n_items, cfg.batch_size, cfg.seed, self.rank, self.world)
        except (TypeError, ValueError) as err:
            raise InputError(f"cannot batch the training data: {err}") from None
        st = self.state
        if ckpt is not None:
            assert self.ckpt_path is not None
            parts = {"method": method, "optimizer": self.optimizer, "scaler": self.scaler, "sampler": self.sampler}
            st.step, st.base_elapsed, st.skipped = restore_state(
                ckpt, self.ckpt_path, parts, cfg, self.device, self.reporter
            )
            st.last_saved, st.last_saved_elapsed, st.last_path = st.step, st.base_elapsed, self.ckpt_path
        else:
            seed_everything(cfg.seed + self.rank)
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out_dir / "config.yaml")
            trim_metrics(metrics_path, st.step)
        self.metrics = open(metrics_path, "a", encoding="utf-8") if self.main else None
        self.model = self._wrap(method)
        self.loader = self._make_loader()
        self.params = [p for p in method.parameters() if p.requires_grad]
        self.crops_per_item = int(method.crops_per_item)
        self.window = MetricsWindow()
        st.lr, st.t0 = cfg.lr, time.monotonic()

    def _wrap(self, method: Method) -> nn.Module:
        if self.world == 1:
            return method
        return DistributedDataParallel(
            method,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            forward_sync_buffers=method.ddp_sync_buffers,
            find_unused_parameters=method.ddp_find_unused_parameters,
        )

    def _make_loader(self) -> DataLoader:
        cfg = self.cfg
        return DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            collate_fn=SkipNoneCollate(self.collate_fn),
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.num_workers > 0,
            worker_init_fn=worker_init if cfg.num_workers > 0 else None,
            # a private generator: making a loader iterator must not draw from the global RNG
            generator=torch.Generator().manual_seed(cfg.seed + self.rank),
        )

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        """Epochs of batches until the stopping rule says so."""
        st = self.state
        if self.main and self.world > 1:  # a torchrun job says how it is spread (issue 21 item 9)
            self.reporter.message(world_line(self.world, self.cfg.batch_size, self.device))
        if self.main:
            self.reporter.start(self.cfg.method, st.step, self.cfg.max_steps)
        empty_run = 0  # consecutive batches that lost all their items
        while not self._finished(st.elapsed()):
            assert self.loader is not None
            batches = iter(self.loader)  # moves the sampler to the next epoch when this one is used up
            self.method.on_epoch_start(self.sampler.epoch)
            for batch in batches:
                empty, n_skipped, n_items, elapsed, stop = self._agree(batch)
                if stop:  # a signal reached some rank: checkpoint what is done, on every rank alike
                    if st.step > st.last_saved:
                        self._save()
                    st.stop_requested = True
                    return
                if self._finished(elapsed):
                    return
                self.sampler.mark_consumed()
                st.skipped += int(n_skipped)
                if empty:  # every item of this batch was unreadable (on some rank)
                    empty_run += 1
                    if empty_run > self.sampler.batches_per_epoch:
                        raise WorkError(
                            "a whole epoch of training items was unreadable (the dataset returned None "
                            "for every item); check the manifest's audio paths"
                        )
                    continue
                empty_run = 0
                self._step(batch.data, n_items, elapsed)
                if self._checkpoint_due(elapsed):
                    self._save()
                if self._finished(elapsed):
                    return

    def _agree(self, batch: CollatedBatch) -> tuple[bool, int, int, float, bool]:
        """What every rank must agree on before a step: empty batch? skipped, items, elapsed time, a stop."""
        st = self.state
        values = [float(batch.data is None), batch.n_skipped, batch.n_items, st.elapsed(), float(st.stop_requested)]
        if self.world > 1:
            sync = torch.tensor(values, dtype=torch.float64, device=self.device)
            values = dist_.all_reduce(sync).tolist()
            values[3] /= self.world
        empty, n_skipped, n_items, elapsed, stop = values
        return bool(empty), int(n_skipped), int(n_items), float(elapsed), bool(stop)

    def _step(self, data: Any, n_items: int, elapsed: float) -> None:
        """One optimiser step with its schedule, hooks, metrics and report."""
        cfg, st, method = self.cfg, self.state, self.method
        st.lr = lr_at(
            st.step,
            elapsed,
            base_lr=cfg.lr,
            min_lr=cfg.min_lr,
            warmup_steps=cfg.warmup_steps,
            max_steps=cfg.max_steps,
            max_minutes=cfg.max_minutes,
        )
        method.progress = progress(st.step, elapsed, cfg.max_steps, cfg.max_minutes)
        method.on_step_start(st.step)
        loss_value, logs = self._forward_backward(data, st.lr)
        st.step += 1
        method.after_step(st.step, cfg.max_steps)
        self.window.add(loss_value, n_items * self.crops_per_item, logs)
        if self.main:
            self.reporter.step(
                StepReport(
                    st.step, cfg.max_steps, self.sampler.epoch, loss_value, st.lr, self.window.crops_per_s(), elapsed
                )
            )
        if st.step % cfg.log_every == 0:
            self._log_line()
        if st.step % cfg.checkpoint_every == 0:
            self._save()

    def _forward_backward(self, data: Any, lr: float) -> tuple[float, dict[str, Any]]:
        """Forward, loss check, backward, clip, optimiser step; the loss averaged over ranks."""
        set_lr(self.optimizer, lr)
        batch = to_device(data, self.device, self.device.type == "cuda")
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss, logs = self.model(batch)
        mean_loss = dist_.all_reduce(loss.detach().float().clone().reshape(1), "mean")
        loss_value = float(mean_loss.item())
        if not math.isfinite(loss_value):  # the same verdict on every rank: the value is all-reduced
            raise WorkError(self._diverged(loss_value))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.method.before_optimizer_step(self.state.step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss_value, logs or {}

    # -- the stopping rule, checkpoints, metrics ----------------------------------------------

    def _finished(self, elapsed: float) -> bool:
        cfg = self.cfg
        if cfg.max_steps is not None and self.state.step >= cfg.max_steps:
            return True
        return cfg.max_minutes is not None and elapsed >= 60.0 * cfg.max_minutes

    def _checkpoint_due(self, elapsed: float) -> bool:
        """A time-based checkpoint: ``checkpoint_minutes`` since the last one (elapsed is agreed by all ranks)."""
        minutes, st = self.cfg.checkpoint_minutes, self.state
        if not minutes or st.step <= st.last_saved:
            return False
        return elapsed - st.last_saved_elapsed >= 60.0 * minutes

    def _save(self) -> None:
        """A checkpoint of the full state (a collective: every rank comes here)."""
        st = self.state
        rngs = dist_.all_gather_object(capture_rng(self.device))
        elapsed = st.elapsed()
        st.last_saved, st.last_saved_elapsed = st.step, elapsed
        if not self.main:
            return
        state = {
            "format": 1, "step": st.step, "elapsed": elapsed, "skipped_items": st.skipped,
            "world_size": self.world, "method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "sampler": self.sampler.state_dict(), "rng": rngs,
            "config": config_dict(self.cfg),
        }  # fmt: skip
        ckpt_dir = self.out_dir / CHECKPOINT_DIR
        try:
            st.last_path = save_checkpoint(state, ckpt_dir, st.step, self.cfg.keep_checkpoints)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
            reason = getattr(err, "strerror", None) or " ".join(str(err).split())[:200]
            raise WorkError(
                f"{ckpt_dir}: cannot write the checkpoint of step {st.step} ({reason}); earlier "
                "checkpoints are intact: free space and resume"
            ) from None
        self.reporter.checkpoint(st.last_path, st.step)

    def _log_line(self) -> None:
        """One metrics.jsonl line for the steps since the last one."""
        w, st = self.window, self.state
        if w.steps == 0:
            return
        st.last_loss = w.loss / w.steps
        if self.metrics is not None:
            line = {"step": st.step, "epoch": self.sampler.epoch, "loss": st.last_loss, "lr": st.lr,
                    "crops_per_s": round(w.crops_per_s(), 3), "elapsed": round(st.elapsed(), 3),
                    "skipped_items": st.skipped}  # fmt: skip
            for k, v in w.means().items():
                line.setdefault(k, v)
            self.metrics.write(json.dumps(line) + "\n")
            self.metrics.flush()
        w.reset()

    def _summary(self, encoder_path: Path | None) -> dict[str, Any]:
        st = self.state
        return {
            "out_dir": str(self.out_dir), "steps": st.step, "epoch": self.sampler.epoch, "loss": st.last_loss,
            "elapsed_s": round(st.elapsed(), 3), "skipped_items": st.skipped,
            "checkpoint": str(st.last_path) if st.last_path is not None else None,
            "encoder": str(encoder_path) if encoder_path is not None else None,
            "resumed_from": str(self.ckpt_path) if self.ckpt_path is not None else None,
            "world_size": self.world, "device": str(self.device), "precision": self.precision,
        }  # fmt: skip

    def _diverged(self, value: float) -> str:
        st, last = self.state, self.state.last_path
        where = f"the newest checkpoint is {last.parent.name}/{last.name}" if last else "no checkpoint was written"
        return (
            f"training diverged: the loss is {value} at step {st.step + 1} (epoch {self.sampler.epoch}); nothing "
            f"was saved for it and {where}. Try a lower lr, grad_clip, more warm-up, or bf16/fp32 precision"
        )
