"""The one Trainer behind ``pretrain`` and ``finetune``.

It takes a :class:`~spkemb.methods.base.Method` (which turns a batch into a loss), a dataset, a
collate function and a :class:`~spkemb.train.config.TrainConfig`, and runs the steps: device and
precision, DDP under torchrun, optimiser, warm-up + cosine schedule, gradient clipping,
checkpoints and bit-for-bit resume, metrics.jsonl and a progress bar on stderr. At the end it
hands ``OUT/encoder.pt`` to the command's ``export_encoder`` callable.

The experiment folder (only rank 0 writes)::

    OUT/config.yaml          the effective configuration
    OUT/checkpoints/         step-{N:08d}.pt, the newest ``keep_checkpoints``
    OUT/metrics.jsonl        {step, epoch, loss, lr, crops_per_s, elapsed, skipped_items, <method logs>}
    OUT/encoder.pt           written by export_encoder

A folder that already holds checkpoints is refused unless resuming (``--resume`` or
``fit(resume=True)``), which continues from the newest checkpoint that loads (a corrupt newest one
is reported and skipped) and first drops metrics lines past it. A crash or Ctrl-C loses at most the
steps since the last checkpoint. A NaN/inf loss stops the run with :class:`WorkError` and writes
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
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate

from spkemb.data.manifest import atomic_write_text
from spkemb.data.sampler import ResumableSampler
from spkemb.errors import InputError, WorkError
from spkemb.runtime import check_precision, worker_init
from spkemb.train import distributed as dist_
from spkemb.train.checkpoint import (
    CHECKPOINT_DIR,
    capture_rng,
    find_resume_checkpoint,
    list_checkpoints,
    restore_rng,
    save_checkpoint,
)
from spkemb.train.config import TrainConfig, config_dict, dump_config
from spkemb.train.schedule import lr_at, progress

console = Console(stderr=True)

# Settings that may change on resume without changing what is computed.
_OPERATIONAL = {"device", "num_workers", "checkpoint_every", "keep_checkpoints", "log_every", "resume"}


# ---------------------------------------------------------------------------------------------
# Collate: drop the items a dataset could not read


class CollatedBatch(NamedTuple):
    """What the loader yields: the collated batch (``None`` if every item was dropped), the number
    of items in it and the number of ``None`` items dropped."""

    data: Any
    n_items: int
    n_skipped: int


class SkipNoneCollate:
    """Collate wrapper that drops ``None`` items (unreadable audio) and counts them. Picklable."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        self.collate_fn = collate_fn if collate_fn is not None else default_collate

    def __call__(self, items: list[Any]) -> CollatedBatch:
        kept = [x for x in items if x is not None]
        data = self.collate_fn(kept) if kept else None
        return CollatedBatch(data, len(kept), len(items) - len(kept))


def skip_none_collate(collate_fn: Callable[[list[Any]], Any] | None = None) -> SkipNoneCollate:
    """Wrap ``collate_fn`` (default: torch's ``default_collate``) so that ``None`` items are dropped."""
    return SkipNoneCollate(collate_fn)


# ---------------------------------------------------------------------------------------------
# Small helpers


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA). Call before building the method so that its
    initial weights are reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor inside dicts, lists, tuples and named tuples to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


def _limit_cpu_threads(device: torch.device) -> None:
    """On CPU, share the cores between the processes of this machine (unless OMP_NUM_THREADS says)."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    budget = max(1, cores // max(1, dist_.local_world_size()))
    if torch.get_num_threads() > budget:
        torch.set_num_threads(budget)


def compile_encoder(method: nn.Module) -> None:
    """``torch.compile`` the method's trained encoder in place (``nn.Module.compile``), so that its
    state-dict keys, and hence checkpoints and ``encoder.pt``, are the same with and without it."""
    encoder = getattr(method, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise InputError(f"compile: {type(method).__name__} has no .encoder module to compile")
    encoder.compile()


def build_optimizer(method: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9, Nesterov) over the parameters that require gradients; no weight
    decay on biases, norm weights and other 1-D parameters (scales, temperatures)."""
    decay, no_decay = [], []
    for p in method.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    if not decay and not no_decay:
        raise InputError(f"method {cfg.method!r} has no trainable parameters")
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


class _Window:
    """Running sums between two metrics lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.loss = 0.0
        self.crops = 0.0
        self.logs: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.t0 = time.monotonic()

    def add(self, loss: float, crops: float, logs: dict[str, Any]) -> None:
        self.steps += 1
        self.loss += loss
        self.crops += crops
        for k, v in logs.items():
            with contextlib.suppress(TypeError, ValueError):
                self.logs[k] = self.logs.get(k, 0.0) + float(v)
                self.counts[k] = self.counts.get(k, 0) + 1

    def crops_per_s(self) -> float:
        return self.crops / max(1e-9, time.monotonic() - self.t0)


# ---------------------------------------------------------------------------------------------


class Trainer:
    """Train ``method`` on ``dataset``; see the module docstring. One call to :meth:`fit` per run."""

    def __init__(
        self,
        method: nn.Module,
        dataset: Dataset,
        collate_fn: Callable[[list[Any]], Any] | None,
        cfg: TrainConfig,
        out_dir: str | Path,
        export_encoder: Callable[[Path], None] | None = None,
    ) -> None:
        self.method = method
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.export_encoder = export_encoder

    # -- the run ---------------------------------------------------------------------------

    def fit(self, resume: bool | None = None) -> dict[str, Any]:
        """Train until ``max_steps`` or ``max_minutes``; return a summary (also on --json)."""
        cfg = self.cfg.validate()
        resume = cfg.resume if resume is None else resume
        device = dist_.setup(cfg.device)
        amp_dtype = check_precision(cfg.precision, device)
        _limit_cpu_threads(device)
        rank, world = dist_.rank(), dist_.world_size()
        main = rank == 0
        ckpt_dir = self.out_dir / CHECKPOINT_DIR
        metrics_path = self.out_dir / "metrics.jsonl"

        ckpt_path, state = self._pick_checkpoint(resume, ckpt_dir)
        method = self.method.to(device)
        method.train()
        if cfg.compile:
            compile_encoder(method)
        optimizer = build_optimizer(method, cfg)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        try:
            n_items = len(self.dataset)  # type: ignore[arg-type]
            sampler = ResumableSampler(n_items, cfg.batch_size, cfg.seed, rank, world, drop_last=True)
        except (TypeError, ValueError) as err:
            raise InputError(f"cannot batch the training data: {err}") from None

        step, elapsed, skipped_total = 0, 0.0, 0
        if state is not None:
            assert ckpt_path is not None
            step, elapsed, skipped_total = self._restore(
                state, ckpt_path, method, optimizer, scaler, sampler, device, rank, world
            )
        else:
            seed_everything(cfg.seed + rank)
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out_dir / "config.yaml")
            _trim_metrics(metrics_path, step)

        model: nn.Module = method
        if world > 1:
            model = DistributedDataParallel(
                method,
                device_ids=[device.index] if device.type == "cuda" else None,
                forward_sync_buffers=bool(getattr(method, "ddp_sync_buffers", False)),
                find_unused_parameters=bool(getattr(method, "ddp_find_unused_parameters", False)),
            )
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=SkipNoneCollate(self.collate_fn),
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=cfg.num_workers > 0,
            worker_init_fn=worker_init if cfg.num_workers > 0 else None,
            # a private generator: making a loader iterator must not draw from the global RNG
            generator=torch.Generator().manual_seed(cfg.seed + rank),
        )
        params = [p for p in method.parameters() if p.requires_grad]
        crops_per_item = int(getattr(method, "crops_per_item", 1))
        non_blocking = device.type == "cuda"

        last_saved = step if state is not None else 0
        last_path = ckpt_path
        window = _Window()
        last_loss: float | None = None
        lr = cfg.lr
        t0 = time.monotonic()
        base_elapsed = elapsed

        def now() -> float:
            return base_elapsed + time.monotonic() - t0

        def save(step_: int) -> Path | None:
            rngs = dist_.all_gather_object(capture_rng(device))  # a collective: every rank comes here
            if not main:
                return None
            return save_checkpoint(
                {
                    "format": 1,
                    "step": step_,
                    "elapsed": now(),
                    "skipped_items": skipped_total,
                    "world_size": world,
                    "method": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "sampler": sampler.state_dict(),
                    "rng": rngs,
                    "config": config_dict(cfg),
                },
                ckpt_dir,
                step_,
                cfg.keep_checkpoints,
            )

        def train_step(batch_data: Any, lr: float) -> tuple[float, dict[str, Any]]:
            """Forward, loss check, backward, clip, optimiser step; the loss averaged over ranks."""
            for group in optimizer.param_groups:
                group["lr"] = lr
            data = to_device(batch_data, device, non_blocking)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, logs = model(data)
            mean_loss = dist_.all_reduce(loss.detach().float().clone().reshape(1), "mean")
            loss_value = float(mean_loss.item())
            if not math.isfinite(loss_value):  # the same verdict on every rank: the value is all-reduced
                raise WorkError(self._diverged(loss_value, step + 1, sampler.epoch, last_path))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            method.before_optimizer_step(step)
            scaler.step(optimizer)
            scaler.update()
            return loss_value, logs or {}

        metrics = open(metrics_path, "a", encoding="utf-8") if main else None

        def log_line(step_: int) -> None:
            nonlocal last_loss
            if window.steps == 0:
                return
            last_loss = window.loss / window.steps
            if metrics is not None:
                line = {
                    "step": step_,
                    "epoch": sampler.epoch,
                    "loss": last_loss,
                    "lr": lr,
                    "crops_per_s": round(window.crops_per_s(), 3),
                    "elapsed": round(now(), 3),
                    "skipped_items": skipped_total,
                }
                for k, v in window.logs.items():
                    line.setdefault(k, v / window.counts[k])
                metrics.write(json.dumps(line) + "\n")
                metrics.flush()
            window.reset()

        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not main,
        )
        task = bar.add_task(cfg.method, total=cfg.max_steps, completed=step, info="")
        done = self._finished(step, elapsed)
        batches: Iterator[CollatedBatch] | None = None
        empty_run = 0  # consecutive batches that lost all their items
        try:
            with bar:
                while not done:
                    batches = iter(loader)
                    for batch in batches:
                        # What every rank must agree on before the step: empty batch? elapsed time?
                        empty, n_skipped, n_items, elapsed = (
                            float(batch.data is None), batch.n_skipped, batch.n_items, now()
                        )
                        if world > 1:
                            sync = torch.tensor([empty, n_skipped, n_items, elapsed], dtype=torch.float64,
                                                device=device)
                            empty, n_skipped, n_items, elapsed = dist_.all_reduce(sync).tolist()
                            elapsed /= world
                        if self._finished(step, elapsed):
                            done = True
                            break
                        sampler.mark_consumed()
                        skipped_total += int(n_skipped)
                        if empty:  # every item of this batch was unreadable (on some rank)
                            empty_run += 1
                            if empty_run > sampler.batches_per_epoch:
                                raise WorkError("a whole epoch of training items was unreadable (the dataset "
                                                "returned None for every item); check the manifest's audio paths")
                            continue
                        empty_run = 0

                        lr = lr_at(step, elapsed, base_lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                                   max_steps=cfg.max_steps, max_minutes=cfg.max_minutes)
                        method.progress = progress(step, elapsed, cfg.max_steps, cfg.max_minutes)
                        loss_value, logs = train_step(batch.data, lr)
                        step += 1
                        method.after_step(step, cfg.max_steps)

                        window.add(loss_value, n_items * crops_per_item, logs)
                        bar.update(task, completed=step, info=f"loss {loss_value:.4f}  "
                                   f"{window.crops_per_s():.0f} crops/s  lr {lr:.2e}")
                        if step % cfg.log_every == 0:
                            log_line(step)
                        if step % cfg.checkpoint_every == 0:
                            last_path, last_saved = save(step) or last_path, step
                        if self._finished(step, elapsed):
                            done = True
                            break
                    batches = None
            log_line(step)
            if step > last_saved:
                last_path, last_saved = save(step) or last_path, step
        finally:
            if metrics is not None:
                metrics.close()
            batches = None
            del loader  # shut persistent workers down now, also when an error is on its way up

        encoder_path = None
        if main and self.export_encoder is not None:
            encoder_path = self.out_dir / "encoder.pt"
            self.export_encoder(encoder_path)
        dist_.barrier()
        return {
            "out_dir": str(self.out_dir),
            "steps": step,
            "epoch": sampler.epoch,
            "loss": last_loss,
            "elapsed_s": round(now(), 3),
            "skipped_items": skipped_total,
            "checkpoint": str(last_path) if last_path is not None else None,
            "encoder": str(encoder_path) if encoder_path is not None else None,
            "resumed_from": str(ckpt_path) if ckpt_path is not None else None,
            "world_size": world,
            "device": str(device),
            "precision": cfg.precision,
        }

    # -- pieces ----------------------------------------------------------------------------

    def _finished(self, step: int, elapsed: float) -> bool:
        cfg = self.cfg
        if cfg.max_steps is not None and step >= cfg.max_steps:
            return True
        return cfg.max_minutes is not None and elapsed >= 60.0 * cfg.max_minutes

    def _pick_checkpoint(self, resume: bool, ckpt_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
        """Rank 0 chooses (newest loadable checkpoint, or a refusal); every rank loads the same one."""
        verdict: dict[str, Any] = {"path": None, "error": None}
        state = None
        if dist_.is_main():
            existing = list_checkpoints(ckpt_dir)
            if not resume:
                if existing:
                    verdict["error"] = (
                        "input",
                        f"already holds checkpoints (newest {existing[-1][1].name}); pass --resume to continue "
                        "that run, or choose another output folder",
                    )
            else:
                try:
                    found = find_resume_checkpoint(ckpt_dir)
                except ValueError as err:
                    verdict["error"] = ("work", f"cannot resume: {err}")
                else:
                    if found is None:
                        console.print(f"no checkpoint in {ckpt_dir}; starting from scratch", highlight=False)
                    else:
                        verdict["path"] = str(found[0])
                        state = found[1]
                        console.print(f"resuming from {found[0]} (step {state['step']})", highlight=False)
        verdict = dist_.broadcast_object(verdict)  # type: ignore[assignment]
        if verdict["error"] is not None:
            kind, message = verdict["error"]
            if kind == "input":
                raise InputError(message, self.out_dir)
            raise WorkError(message)
        if verdict["path"] is None:
            return None, None
        path = Path(verdict["path"])
        if state is None:  # another rank: read the file rank 0 chose
            from spkemb.train.checkpoint import load_checkpoint

            state = load_checkpoint(path)
        return path, state

    def _restore(
        self,
        state: dict[str, Any],
        path: Path,
        method: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        sampler: ResumableSampler,
        device: torch.device,
        rank: int,
        world: int,
    ) -> tuple[int, float, int]:
        cfg = self.cfg
        main = rank == 0
        old = state.get("config", {})
        if main and isinstance(old, dict):
            now_cfg = config_dict(cfg)
            changed = [
                f"{k} {old[k]!r} -> {now_cfg[k]!r}"
                for k in now_cfg
                if k not in _OPERATIONAL and k in old and old[k] != now_cfg[k]
            ]
            if changed:
                console.print(
                    "[bold yellow]warning:[/] resuming with changed settings (" + "; ".join(changed)
                    + "): the run will differ from an uninterrupted one",
                    highlight=False,
                    soft_wrap=True,
                )
        try:
            method.load_state_dict(state["method"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            detail = " ".join(str(err).split())[:300]
            raise InputError(f"does not match this method and encoder: {detail}", path) from None
        if "scaler" in state and scaler.is_enabled() and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        try:
            sampler.load_state_dict(state["sampler"])
        except (ValueError, KeyError) as err:
            sampler.epoch = int(state["sampler"].get("epoch", 0)) + 1
            sampler.consumed = 0
            if main:
                console.print(
                    f"[bold yellow]warning:[/] {err}; continuing at the start of epoch {sampler.epoch}",
                    highlight=False,
                    soft_wrap=True,
                )
        rngs = state.get("rng") or []
        if len(rngs) == world:
            restore_rng(rngs[rank], device)
        else:
            seed_everything(cfg.seed + rank + int(state["step"]))
            if main:
                console.print(
                    f"[bold yellow]warning:[/] the checkpoint was written by {len(rngs)} process(es), this run has "
                    f"{world}; random streams are reseeded",
                    highlight=False,
                    soft_wrap=True,
                )
        return int(state["step"]), float(state.get("elapsed", 0.0)), int(state.get("skipped_items", 0))

    @staticmethod
    def _diverged(value: float, step: int, epoch: int, last: Path | None) -> str:
        where = f"the newest checkpoint is {last.parent.name}/{last.name}" if last else "no checkpoint was written"
        return (
            f"training diverged: the loss is {value} at step {step} (epoch {epoch}); nothing was saved for it and "
            f"{where}. Try a lower lr, grad_clip, more warm-up, or bf16/fp32 precision"
        )


def _trim_metrics(path: Path, step: int) -> None:
    """Keep the metrics lines of steps up to ``step`` (all of them from a fresh start: none), so a
    resumed run that repeats steps after its checkpoint does not log them twice."""
    if not path.exists():
        return
    kept = []
    if step > 0:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line)["step"]) <= step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
    atomic_write_text(path, "".join(kept))
