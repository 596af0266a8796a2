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
import re
from pathlib import Path
from typing import Any

__all__ = ["declared", "method_names", "encoder_names", "option_defaults", "literal_choices", "declaring_modules"]

_ROOT = Path(__file__).parents[1]  # the spkemb package


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


@functools.cache
def declaring_modules(package: str, decorator: str) -> tuple[str, ...]:
    """The modules of ``package`` (e.g. ``"methods"``) with at least one ``@decorator("name")``: the
    ones a registry imports to hold the built-ins."""
    out = []
    for path in sorted((_ROOT / package).glob("*.py")):
        if re.search(rf"^@{decorator}\(", path.read_text(encoding="utf-8"), re.M):
            out.append(f"spkemb.{package}.{path.stem}")
    return tuple(out)


def method_names(kind: str | None = None) -> list[str]:
    """Built-in methods of ``kind`` (``pretrain`` or ``finetune``; None: all), sorted."""
    return sorted(n for n, kw in declared("methods", "register_method") if kind is None
                  or kw.get("kind", "pretrain") == kind)  # fmt: skip


def encoder_names() -> list[str]:
    """Built-in encoders, sorted."""
    return sorted(n for n, _ in declared("models", "register_encoder"))


@functools.cache
def _module(relpath: str) -> ast.Module:
    path = _ROOT / relpath
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def option_defaults(relpath: str, cls: str) -> dict[str, Any]:
    """The defaults of the ``opt(DEFAULT, help)`` fields of options class ``cls`` in ``relpath``
    (e.g. ``"methods/supervised.py"``), read from the source: for the command line's ``[default: ...]``
    of options whose module imports torch. Fields whose default is not a literal are left out."""
    for node in _module(relpath).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            out: dict[str, Any] = {}
            for item in node.body:
                if (
                    isinstance(item, ast.AnnAssign)
                    and isinstance(item.target, ast.Name)
                    and isinstance(item.value, ast.Call)
                    and isinstance(item.value.func, ast.Name)
                    and item.value.func.id == "opt"
                    and item.value.args
                ):
                    try:
                        out[item.target.id] = ast.literal_eval(item.value.args[0])
                    except ValueError:
                        continue
            return out
    raise LookupError(f"no class {cls} in spkemb/{relpath}")


def literal_choices(relpath: str, alias: str) -> tuple[str, ...]:
    """The values of ``ALIAS = Literal["a", "b", ...]`` in ``relpath``, read from the source."""
    for node in _module(relpath).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == alias for t in node.targets)
            and isinstance(node.value, ast.Subscript)
        ):
            items = node.value.slice
            elts = items.elts if isinstance(items, ast.Tuple) else [items]
            return tuple(str(ast.literal_eval(e)) for e in elts)
    raise LookupError(f"no Literal alias {alias} in spkemb/{relpath}")
