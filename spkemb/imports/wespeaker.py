"""WeSpeaker model folders (``config.yaml`` + ``avg_model.pt``) as spkemb encoders.

Supported: ``ResNet18`` / ``ResNet34`` (basic blocks, ``TSTP`` pooling) -> ``wespeaker-resnet``, and
``ECAPA_TDNN_c512`` / ``_c1024`` (and their ``_GLOB_`` forms, ``ASTP`` pooling) -> ``wespeaker-ecapa``.
The options come from ``model_args`` and ``dataset_args`` of ``config.yaml``; the checkpoint's
``module.`` prefixes are stripped and the training head (``projection.*``) is dropped. The front-end
is WeSpeaker's: Kaldi fbank (``num_mel_bins``, ``frame_length``/``frame_shift`` 25/10 ms, hamming
window, samples scaled by 2^15, no dither at inference) minus its mean over the utterance.

``src`` is the folder or the checkpoint file itself (``config.yaml`` beside it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from spkemb.errors import InputError
from spkemb.imports.checkpoints import (
    drop_keys,
    imported_extra,
    load_weights,
    read_state_dict,
    read_yaml,
    require,
    strip_prefixes,
)
from spkemb.models import build_encoder

__all__ = ["import_model", "encoder_config"]

CHECKPOINT_NAMES = ("avg_model.pt", "avg_model.pth", "final_model.pt", "model.pt")
RESNET_LAYERS = {"ResNet18": (2, 2, 2, 2), "ResNet34": (3, 4, 6, 3)}
ECAPA = re.compile(r"^ECAPA_TDNN(_GLOB)?_c(512|1024)$")


def _files(src: Path) -> tuple[Path, Path]:
    """(checkpoint, config.yaml) of a model folder or a checkpoint file."""
    if src.is_dir():
        config = require(src / "config.yaml", "config.yaml (a WeSpeaker model folder holds it and avg_model.pt)")
        ckpt = next((src / n for n in CHECKPOINT_NAMES if (src / n).is_file()), None)
        if ckpt is None:
            found = sorted(src.glob("*.pt"))
            if len(found) != 1:
                raise InputError(f"no WeSpeaker checkpoint here (expected {CHECKPOINT_NAMES[0]})", src)
            ckpt = found[0]
        return ckpt, config
    if src.is_file() and not (src.parent / "config.yaml").is_file():
        raise InputError("not a WeSpeaker model: no config.yaml (WeSpeaker's model config) beside it", src)
    return src, require(src.parent / "config.yaml", "config.yaml beside the checkpoint (WeSpeaker's model config)")


def _section(cfg: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = cfg.get(key) or {}
    if not isinstance(value, dict):
        raise InputError(f"{key} is not a mapping", path)
    return value


def encoder_config(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """The spkemb encoder config (``name`` + options) of WeSpeaker config ``cfg`` (read from ``path``)."""
    model = cfg.get("model")
    if not isinstance(model, str):
        raise InputError("config has no 'model' name (not a WeSpeaker config.yaml?)", path)
    args = _section(cfg, "model_args", path)
    data = _section(cfg, "dataset_args", path)
    fbank: dict[str, Any] = data.get("fbank_args") or {}
    if not isinstance(fbank, dict):
        raise InputError("dataset_args.fbank_args is not a mapping", path)
    frontend = data.get("frontend", cfg.get("frontend", "fbank"))
    if frontend not in (None, "fbank"):
        raise InputError(f"front-end {frontend!r} is not supported (only WeSpeaker's fbank models)", path)
    n_mels = int(args.get("feat_dim") or fbank.get("num_mel_bins") or 80)
    if int(fbank.get("num_mel_bins") or n_mels) != n_mels:
        raise InputError(f"fbank num_mel_bins {fbank.get('num_mel_bins')} != model feat_dim {n_mels}", path)
    for key, want in (("frame_length", 25), ("frame_shift", 10)):
        if float(fbank.get(key, want)) != want:
            raise InputError(f"fbank {key} {fbank[key]} ms is not supported (only {want} ms)", path)
    common: dict[str, Any] = {
        "sample_rate": int(data.get("resample_rate", 16000)),
        "n_mels": n_mels,
        "embed_dim": int(args.get("embed_dim", 256 if model.startswith("ResNet") else 192)),
    }
    if model in RESNET_LAYERS:
        pooling = args.get("pooling_func", "TSTP")
        if pooling != "TSTP":
            raise InputError(f"ResNet pooling {pooling!r} is not supported (only TSTP)", path)
        return {
            "name": "wespeaker-resnet",
            **common,
            "layers": RESNET_LAYERS[model],
            "two_emb_layer": bool(args.get("two_emb_layer", False)),
        }
    match = ECAPA.match(model)
    if match:
        pooling = args.get("pooling_func", "ASTP")
        if pooling != "ASTP":
            raise InputError(f"ECAPA pooling {pooling!r} is not supported (only ASTP)", path)
        return {
            "name": "wespeaker-ecapa",
            **common,
            "channels": int(match.group(2)),
            "global_context": match.group(1) is not None,
            "emb_bn": bool(args.get("emb_bn", False)),
        }
    supported = ", ".join([*RESNET_LAYERS, "ECAPA_TDNN_c512", "ECAPA_TDNN_c1024", "ECAPA_TDNN_GLOB_c512/c1024"])
    raise InputError(f"WeSpeaker model {model!r} is not supported (supported: {supported})", path)


def import_model(src: Path) -> nn.Module:
    """The WeSpeaker model in folder (or checkpoint file) ``src`` as a spkemb encoder, weights loaded."""
    src = Path(src)
    ckpt, config_path = _files(src)
    cfg = read_yaml(config_path)
    try:
        config = encoder_config(cfg, config_path)
    except (TypeError, ValueError) as err:  # e.g. feat_dim: "eighty"
        raise InputError(f"unusable model settings ({err})", config_path) from None
    state = drop_keys(strip_prefixes(read_state_dict(ckpt), ("module.",)), ("projection.",))
    model = build_encoder(**config)
    load_weights(model, state, ckpt, what="WeSpeaker checkpoint")
    model.eval()
    peer = {
        "model": cfg.get("model"),
        "model_args": cfg.get("model_args") or {},
        "fbank_args": (cfg.get("dataset_args") or {}).get("fbank_args") or {},
    }
    model.extra = imported_extra("wespeaker", src, [ckpt, config_path], peer)  # type: ignore[assignment]
    return model
