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
    method_options: {teacher_temp: 0.04, n_local: 4}

Precedence: dataclass defaults < config file < command-line options. :func:`merge_config` takes the
options as a dict in which ``None`` means "not given on the command line"; dict-valued options are
merged key by key into the file's dict. The effective configuration is written to the experiment's
``config.yaml`` by :func:`dump_config`, and that file is itself a valid ``--config``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from spkemb.errors import InputError

OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("fp32", "bf16", "fp16")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class TrainConfig:
    """Everything that shapes a training run. ``batch_size`` is per process (per GPU under torchrun)."""

    method: str = "simclr"
    encoder: str = "ecapa"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 0.0  # the floor the cosine decays to
    weight_decay: float = 0.0  # not applied to biases, norms and other 1-D parameters
    optimizer: str = "adamw"  # adamw | sgd (sgd uses momentum 0.9, Nesterov)
    warmup_steps: int = 0
    max_steps: int | None = None  # at least one of max_steps / max_minutes must be set
    max_minutes: float | None = None
    grad_clip: float | None = None  # max global gradient norm; None or 0 = no clipping
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 needs CUDA)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 1000  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 3
    log_every: int = 10  # steps between metrics.jsonl lines
    resume: bool = False
    compile: bool = False  # torch.compile the encoder (inductor); pays a one-off compile at start-up
    method_options: dict[str, Any] = field(default_factory=dict)  # read by the method
    data_options: dict[str, Any] = field(default_factory=dict)  # read by the CLI's dataset (crops, augment)

    def validate(self, source: str | Path | None = None) -> TrainConfig:
        """Raise :class:`InputError` (naming ``source``) for a value out of range; return self."""

        def bad(key: str, why: str) -> InputError:
            return InputError(f"{key}: {why} (got {getattr(self, key)!r})", source)

        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {', '.join(PRECISIONS)}")
        if not _DEVICE_RE.match(self.device):
            raise bad("device", "must be auto, cpu, cuda or cuda:N")
        for key in ("batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, key) < 1:
                raise bad(key, "must be at least 1")
        for key in ("warmup_steps", "num_workers", "seed"):
            if getattr(self, key) < 0:
                raise bad(key, "must not be negative")
        for key in ("lr", "min_lr", "weight_decay"):
            if getattr(self, key) < 0:
                raise bad(key, "must not be negative")
        if self.max_steps is None and self.max_minutes is None:
            raise InputError("set max_steps or max_minutes (or both) to bound the run", source)
        if self.max_steps is not None and self.max_steps < 1:
            raise bad("max_steps", "must be at least 1")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise bad("max_minutes", "must be positive")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise bad("grad_clip", "must not be negative")
        return self


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_DICT_FIELDS = {"encoder_kwargs", "method_options", "data_options"}
_INT_FIELDS = {"batch_size", "warmup_steps", "max_steps", "seed", "num_workers", "checkpoint_every",
               "keep_checkpoints", "log_every"}
_FLOAT_FIELDS = {"lr", "min_lr", "weight_decay", "max_minutes", "grad_clip"}
_STR_FIELDS = {"method", "encoder", "optimizer", "precision", "device"}
_BOOL_FIELDS = {"resume", "compile"}


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
) -> TrainConfig:
    """Defaults < ``file_dict`` (read from ``source``) < ``overrides`` (``None`` = not given).

    Unknown keys, wrongly typed values and values out of range raise :class:`InputError` naming
    ``source`` (for overrides: no file) and the key.
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
            value = _coerce(key, value, origin)
            if key in _DICT_FIELDS and key in values:
                value = {**values[key], **value}
            values[key] = value
    return TrainConfig(**values).validate(source)


def _coerce(key: str, value: Any, source: str | Path | None) -> Any:
    def bad(expected: str) -> InputError:
        return InputError(f"{key}: expected {expected}, got {value!r}", source)

    if key in _DICT_FIELDS:
        if not isinstance(value, Mapping):
            raise bad("a mapping")
        return {str(k): v for k, v in value.items()}
    if key in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if value is None:
        if key in ("max_steps", "max_minutes", "grad_clip"):
            return None
        raise bad("a value")
    if key in _STR_FIELDS:
        if not isinstance(value, str):
            raise bad("a string")
        return value.strip().lower() if key in ("optimizer", "precision", "device") else value
    if isinstance(value, bool):
        raise bad("a number")
    if key in _INT_FIELDS:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise bad("an integer") from None
        if not isinstance(value, int):
            raise bad("an integer")
        return value
    if key in _FLOAT_FIELDS:
        # PyYAML reads ``1e-3`` (no dot) as a string: accept numeric strings.
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    return value  # pragma: no cover - every field is in one of the sets above


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain Python data (safe for YAML, JSON and ``torch.load(weights_only=True)``)."""
    return asdict(cfg)


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the effective configuration as YAML (atomically); the file is a valid ``--config``."""
    from spkemb.data.manifest import atomic_write_text

    data = config_dict(cfg)
    data.pop("resume")  # how this run started, not what it is: a rerun with this file starts afresh
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
