"""Encoder registry: ``@register_encoder("name")`` on a class, then ``build_encoder("name", **kw)``.

An encoder is an ``nn.Module`` whose ``forward(wav, lengths=None)`` maps a padded batch of
waveforms (B, S) at ``self.sample_rate`` to (B, ``self.embed_dim``) embeddings (not normalised).
Its options are one dataclass (the class attribute ``Options``, a :class:`spkemb.options.Options`),
its constructor takes ``(options=None, **kwargs)``, and its ``config`` dict holds ``name`` plus the
options (``{"name": ..., **options.to_dict()}``), which rebuild it: ``build_encoder(**config)``.
A class attribute ``parameter_free = True`` marks a built-in baseline that needs no weights file.
Names and discovery are those of the method registry (:class:`spkemb.registry.Registry`): ``ECAPA``
and ``wavlm_mhfa`` find ``ecapa`` and ``wavlm-mhfa``; the modules of this package that hold a
``@register_encoder`` are imported on the first lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from spkemb.options import Options
from spkemb.registry import Registry, normalise_name

__all__ = [
    "register_encoder",
    "build_encoder",
    "list_encoders",
    "encoder_class",
    "encoder_options",
    "is_parameter_free",
]

ENCODERS: Registry[nn.Module] = Registry("encoder", "models", "register_encoder")
_key = normalise_name


def register_encoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that makes an encoder buildable by ``name`` (write it as a literal: the command
    line reads it from the source)."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        key = ENCODERS.add(name, cls)
        setattr(cls, "encoder_name", key)  # noqa: B010 - a class attribute nn.Module does not declare
        return cls

    return decorate


def list_encoders() -> list[str]:
    """Names of the registered encoders, sorted."""
    return ENCODERS.names()


def encoder_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``; unknown names raise :class:`InputError`."""
    return ENCODERS.get(name)


def _options_class(name: str) -> type[Options]:
    """The options dataclass of encoder ``name`` (every encoder class has an ``Options`` attribute)."""
    return getattr(encoder_class(name), "Options")  # noqa: B009


def encoder_options(name: str) -> dict[str, Any]:
    """Every option of encoder ``name`` with its default."""
    return dict(_options_class(name).defaults())


def is_parameter_free(name: str) -> bool:
    """True for a built-in baseline that works without a weights file (e.g. ``mfcc-stats``)."""
    ENCODERS.load_builtins()
    return name in ENCODERS and bool(getattr(ENCODERS.get(name), "parameter_free", False))


def build_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build the encoder registered as ``name`` with ``kwargs``.

    An unknown name or an option the encoder does not take raises :class:`InputError`.
    The returned module's ``config`` rebuilds it: ``build_encoder(**model.config)``.
    """
    cls = encoder_class(name)
    options = _options_class(name).from_mapping(kwargs, f"encoder {_key(name)!r}")
    model = cls(options)
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or config.get("name") != _key(name):
        raise TypeError(f"{cls.__qualname__} must set config = {{'name': {_key(name)!r}, ...}}")
    return model
