"""Names that the registries will hold, read from the source without importing it.

``@register_method("dino")`` and ``@register_encoder("ecapa")`` state a name once, in the module
that defines it. The command line needs those names for ``--help`` and completion before it may
import torch, so this module reads the decorators' arguments with :mod:`ast`. The registries
themselves (:mod:`spkemb.methods.registry`, :mod:`spkemb.models.registry`) stay the authority once
imported: a method registered from outside the package is not listed here.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

__all__ = ["declared", "method_names", "encoder_names"]

_ROOT = Path(__file__).parent


@functools.cache
def declared(package: str, decorator: str) -> tuple[tuple[str, dict[str, str]], ...]:
    """``(name, keyword arguments)`` of every ``@decorator("name", ...)`` in the package's modules."""
    found: list[tuple[str, dict[str, str]]] = []
    for path in sorted((_ROOT / package).glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            for dec in node.decorator_list:
                if (
                    isinstance(dec, ast.Call)
                    and isinstance(dec.func, ast.Name)
                    and dec.func.id == decorator
                    and dec.args
                    and isinstance(dec.args[0], ast.Constant)
                ):
                    kw = {k.arg: str(k.value.value) for k in dec.keywords
                          if k.arg and isinstance(k.value, ast.Constant)}  # fmt: skip
                    found.append((str(dec.args[0].value), kw))
    return tuple(found)


def method_names(kind: str | None = None) -> list[str]:
    """Built-in methods of ``kind`` (``pretrain`` or ``finetune``; None: all), sorted."""
    return sorted(n for n, kw in declared("methods", "register_method") if kind is None
                  or kw.get("kind", "pretrain") == kind)  # fmt: skip


def encoder_names() -> list[str]:
    """Built-in encoders, sorted."""
    return sorted(n for n, _ in declared("models", "register_encoder"))
