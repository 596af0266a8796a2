"""Checkpoint averaging: the encoder weights of the last N checkpoints of a run, averaged into one ``encoder.pt``.

The last step of a WeSpeaker, SpeechBrain or 3D-Speaker recipe: the mean of the weights of the final
few checkpoints is usually a little better than any one of them. Sources are either a run folder
(``RUN/checkpoints/step-*.pt``, the newest ``last`` of them) or a list of files, each a training
checkpoint (``step-*.pt``) or an encoder file (``encoder.pt``). Every source must hold the same encoder
(name and options, the same tensor names and shapes); anything else is refused.

Floating-point tensors (weights, BatchNorm running mean and variance) are averaged in float64 and
stored in their own dtype. Integer tensors (BatchNorm's ``num_batches_tracked``) are counters, not
weights: the newest source's value is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spkemb.errors import InputError

__all__ = ["AveragedEncoder", "average_sources", "average_encoders", "save_average"]

ENCODER_PREFIX = "encoder."


@dataclass
class _Source:
    path: Path
    step: int | None
    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    method: str | None


@dataclass
class AveragedEncoder:
    """The averaged weights, the encoder config they fit and the files they came from (oldest first)."""

    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    sources: list[Path]
    steps: list[int | None]
    method: str | None


def average_sources(paths: Sequence[str | Path], last: int | None) -> list[Path]:
    """The files to average: ``paths`` as given, or for one run folder its newest ``last`` checkpoints."""
    from spkemb.train.checkpoint import CHECKPOINT_DIR, list_checkpoints

    if not paths:
        raise InputError("give a run folder or checkpoint files to average")
    if len(paths) == 1 and Path(paths[0]).is_dir():
        run = Path(paths[0])
        ckpt_dir = run / CHECKPOINT_DIR if (run / CHECKPOINT_DIR).is_dir() else run
        found = [p for _, p in list_checkpoints(ckpt_dir)]
        if not found:
            raise InputError("no checkpoints (checkpoints/step-*.pt) in this run folder", run)
        n = last if last is not None else len(found)
        if n > len(found):
            raise InputError(
                f"`last` {n}: the run holds only {len(found)} checkpoints (keep_checkpoints in the config "
                "says how many training keeps)",
                ckpt_dir,
            )
        return found[-n:]
    if last is not None:
        raise InputError("`last` picks from a run folder's checkpoints; with checkpoint files, list the ones to use")
    for p in paths:
        if Path(p).is_dir():
            raise InputError("a folder among checkpoint files: give one run folder, or files only", p)
    return [Path(p) for p in paths]


def _load(path: Path) -> _Source:
    """One source's encoder config and weights (``weights_only=True``); anything else is an InputError."""
    from spkemb.models.io import FORMAT, _load_payload
    from spkemb.train.checkpoint import _NAME_RE

    if not path.is_file():
        raise InputError("no such checkpoint file", path)
    payload = _load_payload(path)
    if not isinstance(payload, dict):
        raise InputError("not a training checkpoint or encoder file", path)
    m = _NAME_RE.match(path.name)
    if payload.get("format") == FORMAT:  # an encoder file
        config, state = payload.get("config"), payload.get("state_dict")
        if not isinstance(config, dict) or not isinstance(state, dict):
            raise InputError("encoder file without config or state_dict", path)
        extra = payload.get("extra")
        method = extra.get("method") if isinstance(extra, dict) else None
        return _Source(path, int(m.group(1)) if m else None, dict(config), dict(state), method)
    method, cfg = payload.get("method"), payload.get("config")
    if not isinstance(method, dict) or not isinstance(cfg, dict) or not isinstance(cfg.get("encoder"), str):
        raise InputError("not a training checkpoint (no method state and config) nor an encoder file", path)
    state = {k[len(ENCODER_PREFIX) :]: v for k, v in method.items() if k.startswith(ENCODER_PREFIX)}
    if not state:
        raise InputError("the checkpoint's method state holds no encoder.* weights", path)
    kwargs = dict(cfg.get("encoder_kwargs") or {})
    kwargs.pop("frontend_weights", None)  # the weights come from the checkpoint
    config = _encoder_config(cfg["encoder"], kwargs, path)
    step = payload.get("step")
    return _Source(path, int(step) if isinstance(step, int) else None, config, state, cfg.get("method"))


def _encoder_config(name: str, kwargs: dict[str, Any], path: Path) -> dict[str, Any]:
    """The encoder file config (``{"name": ..., **options}``) of a training config's encoder."""
    from spkemb.models.registry import _options_class
    from spkemb.registry import normalise_name

    try:
        options = _options_class(name).from_mapping(kwargs, f"encoder {normalise_name(name)!r}")
    except InputError as err:
        raise InputError(err.message, path) from None
    return {"name": normalise_name(name), **options.to_dict()}


def _check_same(first: _Source, other: _Source) -> None:
    if other.config != first.config:
        diff = sorted(k for k in set(first.config) | set(other.config) if first.config.get(k) != other.config.get(k))
        raise InputError(
            f"another encoder config than {first.path.name} (differs in {', '.join(diff)}); "
            "only checkpoints of one run (one config) can be averaged",
            other.path,
        )
    if set(other.state) != set(first.state):
        odd = sorted(set(other.state) ^ set(first.state))
        raise InputError(f"other tensor names than {first.path.name} (e.g. {odd[0]!r})", other.path)
    for k, v in first.state.items():
        w = other.state[k]
        if not isinstance(w, torch.Tensor) or w.shape != v.shape or w.dtype != v.dtype:
            raise InputError(f"tensor {k!r} has another shape or dtype than in {first.path.name}", other.path)


def average_encoders(paths: Sequence[Path]) -> AveragedEncoder:
    """The mean of the sources' encoder weights (integer buffers: the newest source's)."""
    sources = [_load(Path(p)) for p in paths]
    first = sources[0]
    for s in sources[1:]:
        _check_same(first, s)
    if all(s.step is not None for s in sources):
        sources.sort(key=lambda s: int(s.step))  # type: ignore[arg-type]  # all ints, checked above
    state: dict[str, torch.Tensor] = {}
    for k, v in first.state.items():
        if v.is_floating_point() or v.is_complex():
            acc = torch.zeros(v.shape, dtype=torch.complex128 if v.is_complex() else torch.float64)
            for s in sources:
                acc += s.state[k].to(acc.dtype)
            state[k] = (acc / len(sources)).to(v.dtype)
        else:
            state[k] = sources[-1].state[k].clone()
    return AveragedEncoder(first.config, state, [s.path for s in sources], [s.step for s in sources], first.method)


def save_average(avg: AveragedEncoder, out: str | Path) -> Path:
    """Build the encoder, load the averaged weights (strict) and write it as an encoder file, atomically."""
    from spkemb.models.io import save_encoder
    from spkemb.models.registry import build_encoder

    kwargs = {k: v for k, v in avg.config.items() if k != "name"}
    try:
        model = build_encoder(avg.config["name"], **kwargs)
        model.load_state_dict(avg.state, strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise InputError(
            f"the weights do not fit the {avg.config['name']!r} encoder ({first})", avg.sources[0]
        ) from None
    extra = {
        "method": avg.method,
        "averaged": {"n": len(avg.sources), "sources": [str(p) for p in avg.sources], "steps": avg.steps},
    }
    return save_encoder(model, out, extra=extra)
