"""Shared helpers of the importers: read a peer checkpoint safely, tidy its keys, load it by name.

Every failure is an :class:`InputError` (one line, exit status 2) that names the file and, where a
tensor is at fault, the key. Checkpoints are read with ``torch.load(weights_only=True)`` only.

Typical use in an importer::

    sd = read_state_dict(path)                       # the tensors, unwrapped from {"state_dict": ...}
    sd = strip_prefixes(sd, ("module.",))            # DataParallel / DDP wrappers
    sd = drop_keys(sd, ("projection.",))             # the training head
    load_weights(model, sd, path)                    # strict: missing / unexpected / shape, named
    model.extra = imported_extra("wespeaker", src, [path, cfg], peer_config)
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spkemb.errors import InputError

__all__ = [
    "read_checkpoint",
    "read_state_dict",
    "strip_prefixes",
    "drop_keys",
    "rename_keys",
    "check_keys",
    "load_weights",
    "sha256_files",
    "imported_extra",
    "read_yaml",
    "require",
]

# keys under which toolkits nest the weights inside a saved dict
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "embedding_model", "module")


def require(path: Path, what: str) -> Path:
    """``path`` if it is a file, else an InputError saying which file (``what``) is missing."""
    if not path.is_file():
        raise InputError(f"no {what} here", path)
    return path


def read_checkpoint(path: str | Path) -> Any:
    """The object saved in ``path`` with ``torch.load(weights_only=True, map_location='cpu')``.

    A missing, truncated, foreign or unsafe (arbitrary pickle) file raises a one-line InputError.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such checkpoint file", path)
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning: the error below says it all
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise InputError(
                "not a plain PyTorch checkpoint (it holds objects other than tensors; "
                "refused, it is read with weights_only=True)",
                path,
            ) from None
        raise InputError(f"not a PyTorch checkpoint ({first[:200]})", path) from None
    except Exception as err:  # bytes that are no pickle fail in many ways (IndexError, struct.error, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"not a readable PyTorch checkpoint ({first[:200]})", path) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def read_state_dict(path: str | Path, nested: Iterable[str] = NESTED_KEYS) -> dict[str, Tensor]:
    """The name -> tensor dict in checkpoint ``path`` (unwrapped from one of the ``nested`` keys).

    Non-tensor entries beside the tensors (e.g. an epoch counter) are an error only if no tensor
    dict is found at all.
    """
    obj = read_checkpoint(path)
    for _ in range(3):  # {"model": {"state_dict": {...}}} at most
        if _is_state_dict(obj):
            return {str(k): v for k, v in obj.items()}
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in nested if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
            if tensors:
                return tensors
            break
        obj = inner
    raise InputError("holds no tensors by name (not a model checkpoint)", path)


def strip_prefixes(state: Mapping[str, Tensor], prefixes: Iterable[str] = ("module.",)) -> dict[str, Tensor]:
    """``state`` with each of ``prefixes`` removed from the start of the keys (repeatedly, in order)."""
    prefixes = tuple(prefixes)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if p and key.startswith(p):
                    key, changed = key[len(p) :], True
        out[key] = value
    return out


def drop_keys(state: Mapping[str, Tensor], prefixes: Iterable[str]) -> dict[str, Tensor]:
    """``state`` without the keys that start with any of ``prefixes`` (e.g. a head: ``projection.``)."""
    prefixes = tuple(prefixes)
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def rename_keys(state: Mapping[str, Tensor], rename: Callable[[str], str | None]) -> dict[str, Tensor]:
    """``state`` with each key replaced by ``rename(key)``; a key renamed to None is dropped."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = rename(key)
        if new is not None:
            out[new] = value
    return out


def check_keys(model: nn.Module, state: Mapping[str, Tensor], path: str | Path, what: str = "checkpoint") -> None:
    """Raise an InputError naming the first key of ``state`` that does not fit ``model``.

    Checked in this order: a key the model lacks (unexpected), a shape that differs, a key the model
    needs that ``state`` lacks (missing). BatchNorm's ``num_batches_tracked`` may be absent.
    """
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise InputError(f"{what} key {key!r} does not fit this model (no such parameter)", path)
        if tuple(own[key].shape) != tuple(value.shape):
            raise InputError(
                f"{what} key {key!r} has shape {tuple(value.shape)}, the model needs {tuple(own[key].shape)}", path
            )
    for key in own:
        if key not in state and not key.endswith("num_batches_tracked"):
            raise InputError(f"{what} lacks key {key!r} that the model needs", path)


def load_weights(model: nn.Module, state: Mapping[str, Tensor], path: str | Path, what: str = "checkpoint") -> None:
    """Copy ``state`` into ``model`` after :func:`check_keys` (as float32 where floating point)."""
    check_keys(model, state, path, what)
    own = model.state_dict()
    full = {}
    for key, ref in own.items():
        value = state.get(key, ref)
        full[key] = value.to(ref.dtype) if value.is_floating_point() and ref.is_floating_point() else value
    model.load_state_dict(full, strict=True)


def sha256_files(paths: Iterable[str | Path]) -> str:
    """SHA-256 (hex) of the files' bytes, in order (one file: that file's usual checksum)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def imported_extra(
    fmt: str, src: str | Path, files: Iterable[str | Path], peer_config: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``model.extra`` of an imported encoder: ``{"imported": {format, source, sha256, peer_config}}``."""
    paths = [Path(f) for f in files]
    return {
        "imported": {
            "format": fmt,
            "source": str(Path(src)),
            "files": [f.name for f in paths],
            "sha256": sha256_files(paths),
            "peer_config": dict(peer_config),
        }
    }


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (safe loader); anything else raises a one-line InputError."""
    import yaml

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read ({err.__class__.__name__})", path) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"not valid YAML{where}", path) from None
    if not isinstance(data, dict):
        raise InputError("not a YAML mapping", path)
    return data
