"""The encoder file ``encoder.pt``: an encoder's config and weights, loadable with ``weights_only=True``.

Layout (a plain dict, written by ``torch.save``)::

    {"format": "spkemb-encoder", "format_version": 1,
     "config": {"name": ..., **kwargs},      # rebuilds the module: build_encoder(**config)
     "state_dict": {...},                    # tensors on the CPU
     "extra": {...}}                         # optional: training information (plain values)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spkemb.errors import InputError
from spkemb.models.registry import build_encoder, encoder_class, is_parameter_free, list_encoders
from spkemb.utils.encoder_files import ENCODER_FILE, encoder_checksum, encoder_path, file_sha256
from spkemb.utils.fileio import atomic_torch_save

__all__ = ["FORMAT", "FORMAT_VERSION", "ENCODER_FILE", "save_encoder", "load_encoder", "file_sha256",
           "describe_encoder", "unwrap", "encoder_path", "encoder_checksum"]  # fmt: skip

FORMAT = "spkemb-encoder"
FORMAT_VERSION = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The bare encoder inside a DDP / DataParallel / ``torch.compile`` wrapper."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        else:
            return model


def _plain(value: Any) -> Any:
    """Turn ``extra`` into values that ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar
        return value.item()
    if hasattr(value, "tolist"):  # numpy array
        return value.tolist()
    return str(value)


def save_encoder(model: nn.Module, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (config and weights) to ``path`` atomically; return the path."""
    model = unwrap(model)
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "name" not in config:
        raise TypeError("save_encoder needs an encoder with a config dict (build it with build_encoder)")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": _plain(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": _plain(dict(extra or {})),
    }
    return atomic_torch_save(payload, path)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:200]


def _load_payload(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``, with every failure as one line that names the file.

    PyTorch's own message for a file it refuses to unpickle advises loading it with
    ``weights_only=False``, which would run whatever code the file holds: never relay that.
    """
    import pickle
    import warnings
    import zipfile

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for a file about to be refused
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):
            why = "it refers to Python objects other than tensors and plain values, which are never loaded"
        else:
            why = "not a PyTorch file (random bytes, truncated or corrupt?)"
        raise InputError(f"not a spkemb encoder: {why}", path) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError, AttributeError, TypeError) as err:
        raise InputError(
            f"not a spkemb encoder: cannot read it as a PyTorch file ({type(err).__name__})", path
        ) from None


def load_encoder(spec: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load an encoder in eval mode.

    ``spec`` is an encoder file, an experiment folder that holds ``encoder.pt``, or the name of a
    parameter-free built-in baseline (``mfcc-stats``). Anything wrong raises :class:`InputError`.
    The loaded module carries ``extra`` (the file's extra dict, or {}) and ``source`` (the file).
    """
    path = encoder_path(spec)
    if path is None:
        name = str(spec)
        if is_parameter_free(name):
            model = build_encoder(name)
            model.extra, model.source = {}, None  # type: ignore[assignment]  # plain attributes
            return model.to(map_location).eval()
        builtin = ", ".join(n for n in list_encoders() if is_parameter_free(n))
        if name.strip().lower().replace("_", "-") in list_encoders():
            raise InputError(
                f"{name!r} is a trainable encoder: give its encoder file or experiment folder "
                f"(built-in encoders that need no weights: {builtin})",
                spec,
            )
        raise InputError(f"no such encoder file or folder, and not a built-in encoder (built-in: {builtin})", spec)
    if not path.is_file():
        raise InputError("not a regular file", path)
    if path.stat().st_size == 0:
        raise InputError("empty encoder file", path)
    payload = _load_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"not a spkemb encoder file (no format={FORMAT!r}; a training checkpoint?)", path)
    version = payload.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise InputError(f"bad format_version {version!r}", path)
    if version > FORMAT_VERSION:
        raise InputError(
            f"encoder file format version {version} is newer than this spkemb supports ({FORMAT_VERSION})",
            path,
        )
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise InputError("encoder file has no config with an encoder name", path)
    if not isinstance(state, Mapping):
        raise InputError("encoder file has no state_dict", path)
    kwargs = {k: v for k, v in config.items() if k != "name"}
    try:
        encoder_class(config["name"])
        model = build_encoder(config["name"], **kwargs)
    except InputError as err:
        raise InputError(err.message, path) from None
    except (TypeError, ValueError) as err:
        raise InputError(f"bad encoder config ({_short(err)})", path) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(f"weights do not match the {config['name']!r} config ({_short(err)})", path) from None
    extra = payload.get("extra")
    model.extra = extra if isinstance(extra, dict) else {}  # type: ignore[assignment]
    model.source = str(path)  # type: ignore[assignment]
    return model.to(map_location).eval()


def describe_encoder(model: nn.Module) -> dict[str, Any]:
    """Name, config, parameter count, embedding size and sample rate of an encoder."""
    model = unwrap(model)
    config = dict(getattr(model, "config", {}) or {})
    return {
        "name": config.get("name", type(model).__name__),
        "config": config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "embed_dim": getattr(model, "embed_dim", None),
        "sample_rate": getattr(model, "sample_rate", None),
    }
