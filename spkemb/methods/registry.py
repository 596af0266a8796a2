"""Self-supervised pretraining methods by name: ``build_method(name, encoder, **options)``,
``method_views(name, **options)`` (which crops the dataset must make) and ``list_methods()``."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from spkemb.data.crops import ViewSpec
from spkemb.errors import InputError
from spkemb.methods.base import Method
from spkemb.methods.cel import CEL
from spkemb.methods.dino import DINO
from spkemb.methods.moco import MoCo
from spkemb.methods.simclr import SimCLR

__all__ = ["build_method", "method_views", "list_methods", "method_class", "method_options"]

_METHODS: dict[str, type[Method]] = {"moco": MoCo, "simclr": SimCLR, "cel": CEL, "dino": DINO}


def _key(name: str) -> str:
    return str(name).strip().lower()


def list_methods() -> list[str]:
    """Names of the pretraining methods, sorted."""
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    """The class of method ``name``; an unknown name raises :class:`InputError`."""
    key = _key(name)
    if key not in _METHODS:
        raise InputError(f"unknown method {name!r} (known: {', '.join(list_methods())})")
    return _METHODS[key]


def method_options(name: str) -> dict[str, Any]:
    """Every option of method ``name`` with its default (views included)."""
    params = inspect.signature(method_class(name)).parameters
    return {k: p.default for k, p in params.items() if k != "encoder"}


def _check(name: str, options: dict[str, Any]) -> None:
    known = method_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InputError(f"method {_key(name)!r} has no option(s) {', '.join(unknown)} (options: {', '.join(known)})")


def build_method(name: str, encoder: nn.Module, **options: Any) -> Method:
    """Build method ``name`` around ``encoder`` (the network it trains and exports).

    Options are the method's keyword arguments (see each class); an unknown option or name, or a
    bad value, raises :class:`InputError`.
    """
    cls = method_class(name)
    _check(name, options)
    try:
        return cls(encoder, **options)
    except ValueError as err:
        raise InputError(f"method {_key(name)!r}: {err}") from None


def method_views(name: str, **options: Any) -> ViewSpec:
    """The crops method ``name`` trains on with ``options`` (the same options as
    :func:`build_method`; those that do not shape the crops are ignored): ``[(n_crops, seconds)]``
    per group, for :class:`~spkemb.data.crops.CropDataset`."""
    cls = method_class(name)
    _check(name, options)
    params = inspect.signature(cls.views).parameters
    return cls.views(**{k: v for k, v in options.items() if k in params})
