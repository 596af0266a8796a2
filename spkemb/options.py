"""Typed option sets: each method, encoder and the augmentation states its options once, as a dataclass.

A field's type, default and ``help`` (in its metadata, see :func:`opt`) are the single statement of an
option. Everything else derives from it: reading a mapping from a config file or ``KEY=VALUE``
pairs (:meth:`Options.from_mapping`, with generic coercion by the field's type), the saved config
(:meth:`Options.to_dict`), the CLI defaults (``MyOptions.field_name`` is the default value) and the
documentation (:meth:`Options.describe`, used by ``--help`` and the README tables).

Validation of values lives in ``__post_init__`` and raises :class:`ValueError` whose message starts
with the field it is about (``"batch_size: must be at least 1"``, or ``"`top_k` is for `norm` asnorm
only"`` where it names other fields too); ``from_mapping`` turns that, an unknown key and a wrongly
typed value into an :class:`~spkemb.errors.InputError`. Messages below the CLI name fields, never
flags: the CLI shows a leading ``field:`` and a quoted `` `field` `` as its own flag
(:func:`spkemb.cli.errors.cli_message`).

An option set may hold another (``gate: GateOptions = opt(GateOptions(), ...)``): in a mapping it is
a nested mapping, or dotted keys (``gate.threshold``); ``to_dict`` writes it nested. A class that
moved options keeps reading their old keys through ``renamed`` (old key -> dotted new key), with a
:class:`DeprecationWarning`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from spkemb.errors import InputError

__all__ = ["Options", "opt", "coerce", "OptionDoc"]

OptionsT = TypeVar("OptionsT", bound="Options")


def opt(default: Any, help: str) -> Any:  # noqa: A002 - the word users see
    """A dataclass field with ``help`` text; list, dict and tuple defaults are copied per instance."""
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    if isinstance(default, Options):  # a nested option set: a fresh copy per instance
        return dataclasses.field(default_factory=lambda: default.replace(), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class OptionDoc:
    """One option as documentation shows it."""

    name: str
    type: str
    default: Any
    help: str


class Options:
    """Mixin for option dataclasses (``@dataclass class FooOptions(Options): ...``)."""

    #: old keys still read, with a DeprecationWarning: ``{"gate_threshold": "gate.threshold"}``
    renamed: ClassVar[dict[str, str]] = {}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def field_defaults(cls) -> dict[str, Any]:
        """Every field's declared default, without building an instance (a class may refuse its
        all-defaults instance, e.g. a training config without a bound on the run)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every option with its default value, as plain data."""
        return {k: _plain(v) for k, v in cls.field_defaults().items()}

    @classmethod
    def normalise(cls, values: Mapping[str, Any] | None, what: str = "") -> dict[str, Any]:
        """``values`` with ``-`` in keys read as ``_``, dotted keys nested (``gate.threshold: 0.6`` ->
        ``gate: {threshold: 0.6}``) and renamed keys moved to their new place (with a warning).
        Keys are not checked here (:meth:`from_mapping` does)."""
        out: dict[str, Any] = {}
        for raw_key, value in (values or {}).items():
            key = str(raw_key).replace("-", "_")
            if key in cls.renamed:
                new = cls.renamed[key]
                warnings.warn(
                    f"{what + ': ' if what else ''}option {key!r} is now {new!r}; the old name will go",
                    DeprecationWarning,
                    stacklevel=3,
                )
                key = new
            head, dot, rest = key.partition(".")
            if dot:
                inner = out.get(head)
                out[head] = {**(inner if isinstance(inner, Mapping) else {}), rest: value}
            elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
        return out

    @classmethod
    def from_mapping(
        cls: type[OptionsT], values: Mapping[str, Any] | None, what: str = "", source: str | Path | None = None
    ) -> OptionsT:
        """Build from ``values`` (``-`` in keys reads as ``_``), coercing each value to its field's type.

        An unknown key, a value of the wrong type or a value ``__post_init__`` refuses raises
        :class:`InputError` naming ``what`` (e.g. ``"method 'dino'"``) and ``source``.
        """
        prefix = f"{what}: " if what else ""
        hints = _hints(cls)
        known = cls.field_names()
        out: dict[str, Any] = {}
        for raw_key, value in cls.normalise(values, what).items():
            key = str(raw_key)
            if key not in hints:
                raise InputError(
                    f"{prefix}unknown key {raw_key!r}: no option of that name (options: {', '.join(known)})", source
                )
            out[key] = coerce(value, hints[key], f"{prefix}{key}", source)
        try:
            return cls(**out)
        except (ValueError, TypeError) as err:
            raise InputError(f"{prefix}{err}", source) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain Python data (tuples as lists): safe for YAML, JSON and ``torch.load(weights_only=True)``."""
        return {k: _plain(v) for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]

    def replace(self: OptionsT, **changes: Any) -> OptionsT:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def describe(cls) -> list[OptionDoc]:
        """The options for documentation: name, type, default and help."""
        hints = _hints(cls)
        defaults = cls.defaults()
        return [
            OptionDoc(f.name, _type_name(hints[f.name]), defaults[f.name], str(f.metadata.get("help", "")))
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        ]

    @classmethod
    def help_text(cls) -> str:
        """``name=default`` for each option, for one-line help strings."""
        return ", ".join(f"{d.name}={d.default!r}" for d in cls.describe())


def _hints(cls: type) -> dict[str, Any]:
    """The type of each field (class variables such as ``renamed`` left out)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in get_type_hints(cls).items() if k in names}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Options):
        return value.to_dict()
    return value


def _type_name(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(hint))
    if origin is typing.Literal:
        return "|".join(str(a) for a in get_args(hint))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in get_args(hint) if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def coerce(value: Any, hint: Any, key: str, source: str | Path | None = None) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, None, Literal, unions, list/tuple/dict of those).

    Lenient where config files are: ``2.0`` is an int, ``"1e-3"`` (PyYAML reads it as a string) a
    float, ``"10_000"`` an int; never lenient about bools (``1`` is not ``true``).
    """
    if isinstance(hint, type) and issubclass(hint, Options):  # a nested option set
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return hint.from_mapping(value, key, source)
        raise InputError(f"{key}: expected a mapping of {hint.__name__} options, got {value!r}", source)
    try:
        return _coerce(value, hint)
    except (TypeError, ValueError):
        pass
    expected = "true or false" if hint is bool else _type_name(hint)
    raise InputError(f"{key}: expected {expected}, got {value!r}", source)


def _coerce(value: Any, hint: Any) -> Any:  # noqa: C901 - one branch per kind of type (17)
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(hint):
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise ValueError(value)
    if origin is typing.Literal:
        choices = get_args(hint)
        v = value.strip().lower() if isinstance(value, str) else value
        if v in choices:
            return v
        raise ValueError(value)
    if hint is type(None):
        if value is None:
            return None
        raise ValueError(value)
    if origin in (list, tuple) or hint in (list, tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise TypeError(value)
        args = [a for a in get_args(hint) if a is not Ellipsis]
        items = [_coerce(v, args[0]) if args else v for v in value]
        return tuple(items) if (origin or hint) is tuple else list(items)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise TypeError(value)
        kv = get_args(hint)
        return {str(k): _coerce(v, kv[1]) if kv else v for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(value)
    if isinstance(value, bool):
        raise TypeError(value)  # true/false is never a number or a string here
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.replace("_", ""))
        if isinstance(value, int):
            return value
        raise TypeError(value)
    if hint is float:
        if isinstance(value, int | float | str):
            return float(value)
        raise TypeError(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError(value)
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise TypeError(value)
