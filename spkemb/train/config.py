"""The training configuration: one dataclass, read from YAML or TOML, overridden by command-line options.

A config file is a flat mapping of the :class:`TrainConfig` fields (``batch-size`` and ``batch_size``
both work); the three dict fields may be written as nested mappings (TOML tables)::

    # pretrain.yaml
    method: dino
    encoder: ecapa
    encoder_kwargs: {channels: 512, embed_dim: 192}
    batch_size: 128
    lr: 0.0005
    max_steps: 100000
    method_options: {teacher_temp: 0.04, local_crops: 4}

Precedence: dataclass defaults < config file < command-line options. :func:`merge_config` takes the
options as a dict in which ``None`` means "not given on the command line"; dict-valued options are
merged key by key into the file's dict. The effective configuration is written to the experiment's
``config.yaml`` by :func:`dump_config`, and that file is itself a valid ``--config``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import yaml

from spkemb.errors import InputError
from spkemb.options import Options, coerce, opt
from spkemb.utils.choices import OPTIMIZERS, TRAIN_PRECISIONS, Optimizer, TrainPrecision, is_device_spec
from spkemb.utils.fileio import atomic_write_text

UNBOUNDED = "max_steps: set max_steps or max_minutes (or both) to bound the run"


@dataclass
class TrainConfig(Options):
    """Everything that shapes a training run. ``batch_size`` is per process (per GPU under torchrun)."""

    method: str = opt("simclr", "training method (see `spkemb.methods.list_methods()`; pretrain also takes none)")
    encoder: str = opt("ecapa", "encoder name (see `spkemb.models.list_encoders()`)")
    encoder_kwargs: dict[str, Any] = opt({}, "encoder options (the encoder's options dataclass)")
    batch_size: int = opt(64, "items per batch, per process")
    lr: float = opt(1e-3, "peak learning rate")
    min_lr: float = opt(0.0, "the floor the cosine decays to")
    weight_decay: float = opt(0.0, "not applied to biases, norms and other 1-D parameters")
    optimizer: Optimizer = opt("adamw", "adamw | sgd (momentum 0.9, Nesterov)")
    warmup_steps: int = opt(0, "linear warm-up steps")
    max_steps: int | None = opt(None, "stop after this many steps (max_steps and/or max_minutes)")
    max_minutes: float | None = opt(None, "stop after this many minutes of training")
    grad_clip: float | None = opt(None, "max global gradient norm; none or 0 = no clipping")
    precision: TrainPrecision = opt(
        "fp32", "auto | fp32 | bf16 | fp16 (auto: bf16 where the device has it natively, else fp32; fp16: CUDA)"
    )
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")
    seed: int = opt(0, "random seed (init, data order, crops, augmentation)")
    num_workers: int = opt(0, "DataLoader worker processes")
    checkpoint_every: int = opt(1000, "steps between checkpoints (one is also written at the end)")
    checkpoint_minutes: float | None = opt(5.0, "also checkpoint after this many minutes since the last one")
    keep_checkpoints: int = opt(3, "how many of the newest checkpoints to keep")
    log_every: int = opt(10, "steps between metrics.jsonl lines")
    resume: bool = opt(False, "continue from the newest good checkpoint")
    overwrite: bool = opt(False, "start again in a folder that holds checkpoints or an encoder.pt")
    compile: bool = opt(False, "torch.compile the encoder (inductor); a one-off compile at start-up")
    method_options: dict[str, Any] = opt({}, "the method's options (its options dataclass)")
    data_options: dict[str, Any] = opt({}, "data options: augmentation and crop sampling (DataOptions)")

    def __post_init__(self) -> None:
        """Every value in range (``ValueError`` naming the field); ``device`` normalised."""
        self.device = str(self.device).strip().lower()
        if self.optimizer not in OPTIMIZERS:
            raise _bad(self, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        if self.precision not in TRAIN_PRECISIONS:
            raise _bad(self, "precision", f"must be one of {', '.join(TRAIN_PRECISIONS)}")
        if not is_device_spec(self.device):
            raise _bad(self, "device", "must be auto, cpu, cuda or cuda:N")
        for key in ("batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, key) < 1:
                raise _bad(self, key, "must be at least 1")
        for key in ("warmup_steps", "num_workers", "seed", "lr", "min_lr", "weight_decay"):
            if getattr(self, key) < 0:
                raise _bad(self, key, "must not be negative")
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError(UNBOUNDED)
        if self.max_steps is not None and self.max_steps < 1:
            raise _bad(self, "max_steps", "must be at least 1")
        for key in ("max_minutes", "checkpoint_minutes"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise _bad(self, key, "must be positive")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise _bad(self, "grad_clip", "must not be negative")


def _bad(cfg: TrainConfig, key: str, why: str) -> ValueError:
    return ValueError(f"{key}: {why} (got {getattr(cfg, key)!r})")


@dataclass
class OptionSets:
    """The three mapping fields of a :class:`TrainConfig` as their option classes."""

    encoder: Options
    method: Options | None  # None for pretrain's ``method: none`` (a random encoder)
    data: Options


def typed_options(cfg: TrainConfig, source: str | Path | None = None) -> OptionSets:
    """``encoder_kwargs``, ``method_options`` and ``data_options`` built into the encoder's, the
    method's and :class:`~spkemb.train.data.DataOptions`: an unknown name, an unknown key or a bad
    value raises :class:`InputError` (naming ``source``) before any work. Imports the registries.
    ``cfg.method_options`` gets the method's renamed keys moved to their new place (with a warning)."""
    from spkemb.methods import method_class
    from spkemb.models.registry import encoder_class
    from spkemb.train.data import DataOptions

    enc_cls: type[Options] = getattr(encoder_class(cfg.encoder), "Options")  # noqa: B009
    encoder = enc_cls.from_mapping(cfg.encoder_kwargs, f"encoder {cfg.encoder!r}", source)
    method = None
    if cfg.method != "none":
        options_cls, what = method_class(cfg.method).Options, f"method {cfg.method!r}"
        cfg.method_options = options_cls.normalise(cfg.method_options, what)  # renamed keys moved (warned once)
        method = options_cls.from_mapping(cfg.method_options, what, source)
    return OptionSets(encoder, method, DataOptions.from_mapping(cfg.data_options, "data_options", source))


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_HINTS = get_type_hints(TrainConfig)
_DICT_FIELDS = {name for name, hint in _HINTS.items() if get_origin(hint) is dict}


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a dict (not yet checked)."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such config file", p)
    suffix = p.suffix.lower()
    try:
        text = p.read_text(encoding="utf-8")
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise InputError("config file must end in .yaml, .yml or .toml", p)
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
        detail = " ".join(str(err).split())
        raise InputError(f"cannot parse config: {detail}", p) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config must be a mapping of keys to values, not a {type(data).__name__}", p)
    return data


def merge_config(
    file_dict: Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | None = None,
    source: str | Path | None = None,
    check_options: bool = True,
) -> TrainConfig:
    """Defaults < ``file_dict`` (read from ``source``) < ``overrides`` (``None`` = not given).

    Unknown keys, wrongly typed values and values out of range raise :class:`InputError` naming
    ``source`` (for overrides: no file) and the key; so do the keys and values of ``encoder_kwargs``,
    ``method_options`` and ``data_options`` (:func:`typed_options`, which imports the registries;
    ``check_options=False`` leaves that to the job). The three mappings are kept as plain mappings
    (nested and with renamed keys moved, see :meth:`Options.normalise`), merged key by key. Pretrain's
    ``method: none`` (a random encoder, no steps) needs no bound: it gets ``max_steps: 1``.
    """
    values: dict[str, Any] = {}
    for origin, mapping in ((source, file_dict or {}), (None, overrides or {})):
        for raw_key, value in mapping.items():
            key = str(raw_key).replace("-", "_")
            if key not in _FIELDS:
                where = "unknown key" if origin is not None else "unknown option"
                raise InputError(f"{where} {raw_key!r} (known: {', '.join(sorted(_FIELDS))})", origin)
            if value is None and origin is None:
                continue  # not given on the command line
            value = coerce(value, _HINTS[key], key, origin)
            if key in _DICT_FIELDS:
                value = Options.normalise(_deep_merge(values.get(key, {}), Options.normalise(value)))
            values[key] = value
    if values.get("method") == "none" and values.get("max_steps") is None and values.get("max_minutes") is None:
        values["max_steps"] = 1  # a random encoder trains no steps; the config still validates
    # The bound is a policy, not a bad value: a mistyped method, encoder or option is named first.
    bounded = values.get("max_steps") is not None or values.get("max_minutes") is not None
    try:
        cfg = TrainConfig(**(values if bounded else {**values, "max_steps": 1}))
    except ValueError as err:
        raise InputError(str(err), source) from None
    if check_options:
        typed_options(cfg, source)
    if not bounded:
        raise InputError(UNBOUNDED, source)
    return cfg


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base`` key by key, nested mappings too."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain Python data (safe for YAML, JSON and ``torch.load(weights_only=True)``)."""
    return asdict(cfg)


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the effective configuration as YAML (atomically); the file is a valid ``--config``."""
    data = config_dict(cfg)
    for key in ("resume", "overwrite"):  # how this run started, not what it is
        data.pop(key)
    text = "# effective configuration written by spkemb (usable as --config)\n"
    text += yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    atomic_write_text(path, text)


def parse_key_values(pairs: list[str] | None, option: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings (e.g. ``--encoder-opt channels=1024``) -> dict; values are read as YAML
    scalars, so numbers, booleans and lists come out typed."""
    out: dict[str, Any] = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{option} {item!r}: expected KEY=VALUE")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise InputError(f"{option} {item!r}: cannot read the value") from None
    return out
