"""Starting a run: refuse to clobber an experiment, pick the checkpoint to resume, restore its state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spkemb.errors import InputError, WorkError
from spkemb.train.checkpoint import find_resume_checkpoint, list_checkpoints, load_checkpoint, restore_rng
from spkemb.train.config import TrainConfig, config_dict
from spkemb.train.optim import seed_everything
from spkemb.train.report import Reporter
from spkemb.utils import distributed as dist_
from spkemb.utils.fileio import atomic_write_text

__all__ = ["pick_checkpoint", "restore_state", "trim_metrics", "OPERATIONAL"]

#: settings that may change on resume without changing what is computed
OPERATIONAL = {
    "device",
    "num_workers",
    "checkpoint_every",
    "checkpoint_minutes",
    "keep_checkpoints",
    "log_every",
    "resume",
    "overwrite",
}


def _refusal(out_dir: Path, ckpt_dir: Path) -> str | None:
    existing = list_checkpoints(ckpt_dir)
    if existing:
        return (
            f"already holds checkpoints (newest {existing[-1][1].name}); pass `resume` to continue that run, "
            "`overwrite` to start it again, or choose another output folder"
        )
    if (out_dir / "encoder.pt").exists():
        return "already holds a trained encoder.pt; pass `overwrite` to replace it, or choose another output folder"
    return None


def pick_checkpoint(
    out_dir: Path, ckpt_dir: Path, resume: bool, overwrite: bool, reporter: Reporter
) -> tuple[Path | None, dict[str, Any] | None]:
    """Rank 0 chooses (newest loadable checkpoint, or a refusal); every rank loads the same one.

    Without ``resume``, a folder with checkpoints or an ``encoder.pt`` is refused (InputError)
    unless ``overwrite``, which deletes the old checkpoints first.
    """
    verdict: dict[str, Any] = {"path": None, "error": None}
    state = None
    if dist_.is_main():
        if not resume:
            refusal = None if overwrite else _refusal(out_dir, ckpt_dir)
            if refusal:
                verdict["error"] = ("input", refusal)
            elif overwrite:
                for _, old in list_checkpoints(ckpt_dir):
                    old.unlink(missing_ok=True)
        else:
            try:
                found = find_resume_checkpoint(ckpt_dir, warn=lambda t: reporter.message(t, warning=True))
            except ValueError as err:
                verdict["error"] = ("work", f"cannot resume: {err}")
            else:
                if found is None:
                    reporter.message(f"no checkpoint in {ckpt_dir}; starting from scratch")
                else:
                    verdict["path"], state = str(found[0]), found[1]
                    reporter.message(f"resuming from {found[0]} (step {state['step']})")
    verdict = dist_.broadcast_object(verdict)  # type: ignore[assignment]
    if verdict["error"] is not None:
        kind, message = verdict["error"]
        if kind == "input":
            raise InputError(message, out_dir)
        raise WorkError(message)
    if verdict["path"] is None:
        return None, None
    path = Path(verdict["path"])
    if state is None:  # another rank: read the file rank 0 chose
        state = load_checkpoint(path)
    return path, state


def _warn_changed(old: Any, cfg: TrainConfig, reporter: Reporter) -> None:
    if not isinstance(old, dict):
        return
    now_cfg = config_dict(cfg)
    changed = [f"{k} {old[k]!r} -> {now_cfg[k]!r}" for k in now_cfg
               if k not in OPERATIONAL and k in old and old[k] != now_cfg[k]]  # fmt: skip
    if changed:
        reporter.message("resuming with changed settings (" + "; ".join(changed)
                         + "): the run will differ from an uninterrupted one", warning=True)  # fmt: skip


def restore_state(
    state: dict[str, Any],
    path: Path,
    parts: dict[str, Any],
    cfg: TrainConfig,
    device: torch.device,
    reporter: Reporter,
) -> tuple[int, float, int]:
    """Load ``state`` into ``parts`` (``method``, ``optimizer``, ``scaler``, ``sampler``) and the RNGs;
    return ``(step, elapsed, skipped_items)``."""
    rank, world = dist_.rank(), dist_.world_size()
    main = rank == 0
    if main:
        _warn_changed(state.get("config", {}), cfg, reporter)
    method: nn.Module = parts["method"]
    try:
        method.load_state_dict(state["method"])
        parts["optimizer"].load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        detail = " ".join(str(err).split())[:300]
        raise InputError(f"does not match this method and encoder: {detail}", path) from None
    scaler = parts["scaler"]
    if "scaler" in state and scaler.is_enabled() and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    sampler = parts["sampler"]
    try:
        sampler.load_state_dict(state["sampler"])
    except (ValueError, KeyError) as err:
        sampler.epoch = int(state["sampler"].get("epoch", 0)) + 1
        sampler.consumed = 0
        if main:
            reporter.message(f"{err}; continuing at the start of epoch {sampler.epoch}", warning=True)
    rngs = state.get("rng") or []
    if len(rngs) == world:
        restore_rng(rngs[rank], device)
    else:
        seed_everything(cfg.seed + rank + int(state["step"]))
        if main:
            reporter.message(f"the checkpoint was written by {len(rngs)} process(es), this run has {world}; "
                             "random streams are reseeded", warning=True)  # fmt: skip
    return int(state["step"]), float(state.get("elapsed", 0.0)), int(state.get("skipped_items", 0))


def trim_metrics(path: Path, step: int) -> None:
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
