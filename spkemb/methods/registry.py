"""Training methods by name, in the style of timm's model registry.

``@register_method("name")`` on a :class:`~spkemb.methods.base.Method` subclass makes it buildable
with ``build_method("name", encoder, **options)``. The built-in methods are the modules of this
package (one file each), imported on first use; :func:`method_names` lists them without importing
torch (the CLI's help and completion use it).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spkemb.errors import InputError

if TYPE_CHECKING:
    from torch import nn

    from spkemb.methods.base import Method

__all__ = [
    "register_method",
    "list_methods",
    "method_names",
    "method_class",
    "method_options",
    "build_method",
    "method_views",
]

_METHODS: dict[str, type[Method]] = {}
_NOT_METHODS = {"base", "common", "registry"}


def _key(name: str) -> str:
    return str(name).strip().lower()


def register_method(name: str, kind: str = "pretrain") -> Callable[[type[Method]], type[Method]]:
    """Class decorator that makes a method buildable by ``name``; ``kind`` is ``pretrain`` (no labels)
    or ``finetune``. Write both as literals: the command line reads them from the source."""
    key = _key(name)
    if kind not in ("pretrain", "finetune"):
        raise ValueError(f"kind must be pretrain or finetune, not {kind!r}")

    def decorate(cls: type[Method]) -> type[Method]:
        if key in _METHODS and _METHODS[key] is not cls:
            raise ValueError(f"method {key!r} is already registered by {_METHODS[key].__qualname__}")
        _METHODS[key] = cls
        cls.method_name = key
        cls.kind = kind
        return cls

    return decorate


def method_names(kind: str | None = None) -> list[str]:
    """The built-in methods' names, read from their modules without importing them (see
    :mod:`spkemb.discover`)."""
    from spkemb.discover import method_names as declared

    return declared(kind)


def _load_builtins() -> None:
    here = str(Path(__file__).parent)
    for module in pkgutil.iter_modules([here]):
        if module.name not in _NOT_METHODS:
            importlib.import_module(f"spkemb.methods.{module.name}")


def list_methods(kind: str | None = None) -> list[str]:
    """Registered methods, sorted; ``kind`` ``"pretrain"`` or ``"finetune"`` keeps only those."""
    _load_builtins()
    return sorted(k for k, cls in _METHODS.items() if kind is None or cls.kind == kind)


def method_class(name: str) -> type[Method]:
    """The class of method ``name``; an unknown name raises :class:`InputError`."""
    key = _key(name)
    if key not in _METHODS:
        _load_builtins()
    if key not in _METHODS:
        raise InputError(f"unknown method {name!r} (known: {', '.join(list_methods())})")
    return _METHODS[key]


def method_options(name: str) -> dict[str, Any]:
    """Every option of method ``name`` with its default."""
    return method_class(name).Options.defaults()


def _options(name: str, options: dict[str, Any]) -> Any:
    return method_class(name).Options.from_mapping(options, f"method {_key(name)!r}")


def build_method(name: str, encoder: nn.Module, **options: Any) -> Method:
    """Build method ``name`` around ``encoder`` (the network it trains and exports).

    Options are the fields of the method's options dataclass; an unknown option or name, or a bad
    value, raises :class:`InputError`.
    """
    cls = method_class(name)
    opts = _options(name, options)
    try:
        return cls(encoder, opts)  # type: ignore[call-arg]  # every method takes (encoder, options)
    except ValueError as err:
        raise InputError(f"method {_key(name)!r}: {err}") from None


def method_views(name: str, **options: Any) -> list[tuple[int, float]]:
    """The crops method ``name`` trains on with ``options`` (the same options as :func:`build_method`):
    ``[(n_crops, seconds)]`` per group, for :class:`~spkemb.data.crops.CropDataset`."""
    return method_class(name).views(_options(name, options))
