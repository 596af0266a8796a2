"""Training methods by name, in the style of timm's model registry.

``@register_method("name")`` on a :class:`~spkemb.methods.base.Method` subclass makes it buildable
with ``build_method("name", encoder, **options)``. Names and discovery are those of the encoder
registry (:class:`spkemb.registry.Registry`): case and ``_``/``-`` do not matter, and the modules of
this package that hold a ``@register_method`` are imported on first use; :func:`method_names` lists
them without importing torch (the CLI's help and completion use it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from spkemb.errors import InputError
from spkemb.registry import Registry, normalise_name

if TYPE_CHECKING:
    from torch import nn

    from spkemb.methods.base import Method
    from spkemb.options import Options

__all__ = [
    "register_method",
    "list_methods",
    "method_names",
    "method_class",
    "method_options",
    "build_method",
    "method_views",
]

METHODS: Registry[Method] = Registry("method", "methods", "register_method")
_key = normalise_name


def register_method(name: str, kind: str = "pretrain") -> Callable[[type[Method]], type[Method]]:
    """Class decorator that makes a method buildable by ``name``; ``kind`` is ``pretrain`` (no labels)
    or ``finetune``. Write both as literals: the command line reads them from the source."""
    if kind not in ("pretrain", "finetune"):
        raise ValueError(f"kind must be pretrain or finetune, not {kind!r}")

    def decorate(cls: type[Method]) -> type[Method]:
        cls.method_name = METHODS.add(name, cls)
        cls.kind = kind
        return cls

    return decorate


def method_names(kind: str | None = None) -> list[str]:
    """The built-in methods' names, read from their modules without importing them (see
    :mod:`spkemb.utils.discover`)."""
    from spkemb.utils.discover import method_names as declared

    return declared(kind)


def list_methods(kind: str | None = None) -> list[str]:
    """Registered methods, sorted; ``kind`` ``"pretrain"`` or ``"finetune"`` keeps only those."""
    return [k for k in METHODS.names() if kind is None or METHODS.classes[k].kind == kind]


def method_class(name: str) -> type[Method]:
    """The class of method ``name``; an unknown name raises :class:`InputError`."""
    return METHODS.get(name)


def method_options(name: str) -> dict[str, Any]:
    """Every option of method ``name`` with its default."""
    return method_class(name).Options.defaults()


def _options(name: str, options: dict[str, Any]) -> Any:
    return method_class(name).Options.from_mapping(options, f"method {_key(name)!r}")


def build_method(name: str, encoder: nn.Module, options: Options | None = None, /, **kwargs: Any) -> Method:
    """Build method ``name`` around ``encoder`` (the network it trains and exports).

    ``options`` is the method's options object, ``kwargs`` the fields of its options dataclass (over
    ``options`` when both are given); an unknown option or name, or a bad value, raises
    :class:`InputError`. The method's crops are then ``method.crop_views()``.
    """
    cls = method_class(name)
    opts = _options(name, {**(options.to_dict() if options is not None else {}), **kwargs})
    try:
        return cls(encoder, opts)  # type: ignore[call-arg]  # every method takes (encoder, options)
    except ValueError as err:
        raise InputError(f"method {_key(name)!r}: {err}") from None


def method_views(name: str, **options: Any) -> list[tuple[int, float]]:
    """The crops method ``name`` would train on with ``options``, before it is built: ``[(n_crops,
    seconds)]`` per group, for :class:`~spkemb.data.crops.CropDataset`. A built method says it itself
    (:meth:`Method.crop_views`)."""
    return method_class(name).views(_options(name, options))
