"""Checkpoints: the full training state, written atomically, read back with ``weights_only=True``.

Files are ``OUT/checkpoints/step-{N:08d}.pt``. Each is written to a hidden temporary file in the
same folder, flushed and fsync'ed, then renamed into place (``os.replace``), so a crash leaves
either the old set of checkpoints or the new one, never a half-written ``step-*.pt``. Only the
newest ``keep`` are kept.

Because they are loaded with ``torch.load(weights_only=True)``, a checkpoint holds only tensors,
dicts, lists, tuples, numbers, strings, booleans and None. RNG states are converted to that form
by :func:`capture_rng` and back by :func:`restore_rng`.
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spkemb.utils.fileio import atomic_torch_save

CHECKPOINT_DIR = "checkpoints"
_NAME_RE = re.compile(r"^step-(\d{8,})\.pt$")
_REQUIRED_KEYS = ("step", "method", "optimizer", "sampler")


def checkpoint_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step-{step:08d}.pt"


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-*.pt`` in the folder, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(state: dict[str, Any], ckpt_dir: str | Path, step: int, keep: int) -> Path:
    """Write ``state`` as ``step-{step:08d}.pt`` and delete all but the newest ``keep`` checkpoints."""
    path = checkpoint_path(ckpt_dir, step)
    atomic_torch_save(state, path)
    for _, old in list_checkpoints(ckpt_dir)[: -max(1, keep)]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint (``weights_only=True``); raises on a corrupt or incomplete file."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a training state")
    missing = [k for k in _REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    return state


def find_resume_checkpoint(
    ckpt_dir: str | Path, map_location: str | torch.device = "cpu", warn: Callable[[str], None] | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, with its state; ``None`` when the folder has none.

    A newest file that does not load (truncated by a full disk, bit rot, ...) is reported through
    ``warn`` and the previous one is tried. When files exist but none loads, ``ValueError`` says so.
    """
    candidates = list_checkpoints(ckpt_dir)
    failures: list[str] = []
    for _, path in reversed(candidates):
        try:
            state = load_checkpoint(path, map_location)
        except Exception as err:  # anything that stops loading makes the file unusable
            detail = " ".join(str(err).split())[:200] or type(err).__name__
            failures.append(f"{_short(path)} is corrupt ({detail})")
            continue
        for failure in failures:
            (warn or _warn_stderr)(f"{failure}; resuming from {path.name}")
        return path, state
    if failures:
        raise ValueError("no loadable checkpoint: " + "; ".join(failures))
    return None


def _warn_stderr(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def _short(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


# ---------------------------------------------------------------------------------------------
# RNG states in a weights_only-safe form


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """The torch (CPU and ``device``'s CUDA), numpy and Python RNG states as tensors and plain data."""
    np_state: Any = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss_next"]))
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
