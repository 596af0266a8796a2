"""What the encoder and the method registries share: one name normalisation and one discovery.

A name is looked up case-insensitively with ``_`` read as ``-`` (``MoCo``, ``wavlm_mhfa``). The
built-ins are the modules of the registry's package that hold a ``@register_...("name")``
decorator (found by :func:`spkemb.utils.discover.declaring_modules`, which reads the source: the same
reading that gives the command line its names without importing torch); they are imported on the
first lookup that needs them. Classes registered from outside the package join them.
"""

from __future__ import annotations

import importlib
from typing import Generic, TypeVar

from spkemb.errors import InputError
from spkemb.utils.discover import declaring_modules

__all__ = ["Registry", "normalise_name"]

T = TypeVar("T")


def normalise_name(name: str) -> str:
    """The registry key of ``name``: stripped, lower case, ``_`` as ``-``."""
    return str(name).strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """Classes by name: ``what`` (``"encoder"``) in package ``spkemb.<package>``, declared by
    ``@<decorator>("name")``."""

    def __init__(self, what: str, package: str, decorator: str) -> None:
        self.what, self.package, self.decorator = what, package, decorator
        self.classes: dict[str, type[T]] = {}
        self._loaded = False

    def add(self, name: str, cls: type[T]) -> str:
        """Register ``cls`` as ``name``; returns the key. Another class under that name is an error."""
        key = normalise_name(name)
        if key in self.classes and self.classes[key] is not cls:
            raise ValueError(f"{self.what} {key!r} is already registered by {self.classes[key].__qualname__}")
        self.classes[key] = cls
        return key

    def load_builtins(self) -> None:
        """Import the package's modules that declare a class (once)."""
        if not self._loaded:
            for module in declaring_modules(self.package, self.decorator):
                importlib.import_module(module)
            self._loaded = True

    def names(self) -> list[str]:
        """Every registered name, sorted (built-ins loaded)."""
        self.load_builtins()
        return sorted(self.classes)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; an unknown name raises :class:`InputError`."""
        key = normalise_name(name)
        if key not in self.classes:
            self.load_builtins()
        if key not in self.classes:
            raise InputError(f"unknown {self.what} {name!r} (known: {', '.join(self.names()) or 'none'})")
        return self.classes[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalise_name(name) in self.classes
