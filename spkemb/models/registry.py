"""Encoder registry: ``@register_encoder("name")`` on a class, then ``build_encoder("name", **kw)``.

An encoder is an ``nn.Module`` whose ``forward(wav, lengths=None)`` maps a padded batch of
waveforms (B, S) at ``self.sample_rate`` to (B, ``self.embed_dim``) embeddings (not normalised),
and whose ``config`` dict holds ``name`` plus the exact keyword arguments that rebuild it.
A class attribute ``parameter_free = True`` marks a built-in baseline that needs no weights file.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from spkemb.errors import InputError

__all__ = ["register_encoder", "build_encoder", "list_encoders", "encoder_class", "is_parameter_free"]

_ENCODERS: dict[str, type[nn.Module]] = {}


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def register_encoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that makes an encoder buildable by ``name``."""
    key = _key(name)

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if key in _ENCODERS and _ENCODERS[key] is not cls:
            raise ValueError(f"encoder {key!r} is already registered by {_ENCODERS[key].__qualname__}")
        _ENCODERS[key] = cls
        cls.encoder_name = key
        return cls

    return decorate


def list_encoders() -> list[str]:
    """Names of the registered encoders, sorted."""
    return sorted(_ENCODERS)


def encoder_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``; unknown names raise :class:`InputError`."""
    key = _key(name)
    if key not in _ENCODERS:
        known = ", ".join(list_encoders()) or "none"
        raise InputError(f"unknown encoder {name!r} (known: {known})")
    return _ENCODERS[key]


def is_parameter_free(name: str) -> bool:
    """True for a built-in baseline that works without a weights file (e.g. ``mfcc-stats``)."""
    key = _key(name)
    return key in _ENCODERS and bool(getattr(_ENCODERS[key], "parameter_free", False))


def build_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build the encoder registered as ``name`` with ``kwargs``.

    An unknown name or an option the encoder does not take raises :class:`InputError`.
    The returned module's ``config`` rebuilds it: ``build_encoder(**model.config)``.
    """
    cls = encoder_class(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        takes = ", ".join(p for p in inspect.signature(cls).parameters if p != "self")
        raise InputError(f"encoder {_key(name)!r}: {err} (options: {takes})") from None
    model = cls(**kwargs)
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or config.get("name") != _key(name):
        raise TypeError(f"{cls.__qualname__} must set config = {{'name': {_key(name)!r}, ...}}")
    return model
