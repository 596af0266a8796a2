"""SpeechBrain's ECAPA-TDNN (the ``spkrec-ecapa-voxceleb`` layout) as a ``speechbrain-ecapa`` encoder.

The source is the model folder (or its ``embedding_model.ckpt``):

* ``embedding_model.ckpt``: the ``ECAPA_TDNN`` state dict (required). The sizes (mel bins, C, the
  aggregation width, attention and squeeze-excitation bottlenecks, Res2Net scale, embedding size)
  are read from the tensors' shapes; kernels and dilations are SpeechBrain's defaults (5, 3, 3, 3, 1
  and 1, 2, 3, 4, 1), and a ``hyperparams.yaml`` that says otherwise is refused.
* ``mean_var_norm_emb.ckpt`` (optional): the ``InputNormalization`` statistics of the embeddings
  (``glob_mean``, ``glob_std``). When present the imported encoder subtracts ``glob_mean`` from each
  embedding (and divides by ``glob_std`` when the hyperparams set ``std_norm: True``), as
  SpeechBrain's ``EncoderClassifier.encode_batch(wavs, normalize=True)`` does.
* ``hyperparams.yaml`` (optional): read only for the embedding model's and front-end's settings;
  its ``!new``/``!ref`` tags are read as plain values, nothing is constructed.

Files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from spkemb.errors import InputError
from spkemb.models.registry import build_encoder
from spkemb.utils.encoder_files import file_sha256

__all__ = ["import_model", "speechbrain_to_spkemb"]

EMBEDDING_FILE = "embedding_model.ckpt"
EMB_NORM_FILE = "mean_var_norm_emb.ckpt"
HYPERPARAMS_FILE = "hyperparams.yaml"

# SpeechBrain ECAPA_TDNN key -> spkemb speechbrain-ecapa key (applied in order).
_RENAMES: list[tuple[str, str]] = [
    (r"^blocks\.0\.", "layer1."),
    (r"^blocks\.(\d+)\.", "blocks.{n}."),
    (r"\.res2net_block\.blocks\.", ".res2."),
    (r"\.se_block\.conv1\.conv\.", ".se.fc1."),
    (r"\.se_block\.conv2\.conv\.", ".se.fc2."),
    (r"^asp_bn\.norm\.", "pool_bn."),
    (r"^asp\.", "pool."),
    (r"^fc\.conv\.", "fc."),
    (r"\.conv\.conv\.", ".conv."),
    (r"\.norm\.norm\.", ".bn."),
]
# The settings of SpeechBrain's ECAPA_TDNN and Fbank that this encoder reproduces.
_ARCH_DEFAULTS: dict[str, Any] = {
    "kernel_sizes": [5, 3, 3, 3, 1],
    "dilations": [1, 2, 3, 4, 1],
    "groups": [1, 1, 1, 1, 1],
    "activation": None,
}
_FBANK_DEFAULTS: dict[str, Any] = {
    "deltas": False,
    "context": False,
    "f_min": 0,
    "f_max": None,
    "n_fft": 400,
    "filter_shape": "triangular",
    "win_length": 25,
    "hop_length": 10,
}


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        m = re.search(pattern, key)
        if m:
            new = repl.format(n=int(m.group(1)) - 1) if "{n}" in repl else repl
            key = key[: m.start()] + new + key[m.end() :]
    return key


def _peer_key(key: str) -> str:
    """spkemb ``speechbrain-ecapa`` key -> the SpeechBrain key it is read from (the inverse of ``_rename``)."""
    m = re.match(r"blocks\.(\d+)\.", key)
    if m:
        key = f"blocks.{int(m.group(1)) + 1}." + key[m.end() :]
    for pattern, repl in (
        (r"^layer1\.", "blocks.0."),
        (r"\.bn\.(\w+)$", r".norm.norm.\1"),
        (r"\.conv\.(weight|bias)$", r".conv.conv.\1"),
        (r"\.se\.fc(\d)\.", r".se_block.conv\1.conv."),
        (r"\.res2\.", ".res2net_block.blocks."),
        (r"^pool_bn\.", "asp_bn.norm."),
        (r"^pool\.", "asp."),
        (r"^fc\.", "fc.conv."),
    ):
        key = re.sub(pattern, repl, key)
    return key


def _load(path: Path) -> dict[str, Any]:
    """A checkpoint file's dict, read with ``weights_only=True``; anything else is an InputError."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a foreign or corrupt file, whatever torch says
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"not a readable SpeechBrain checkpoint ({text[:160]})", path) from None
    if not isinstance(data, dict):
        raise InputError(f"not a SpeechBrain checkpoint (holds a {type(data).__name__}, not a dict)", path)
    return data


def _shape(state: dict[str, Any], key: str, path: Path, ndim: int) -> tuple[int, ...]:
    value = state.get(key)
    if not isinstance(value, Tensor):
        raise InputError(f"not a SpeechBrain ECAPA-TDNN embedding model (no tensor {key!r})", path)
    if value.ndim != ndim:
        raise InputError(f"{key!r} has shape {tuple(value.shape)}, expected {ndim} dimensions", path)
    return tuple(value.shape)


def _dims_from_shapes(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``speechbrain-ecapa`` options that fit the tensors' shapes."""
    C, n_mels, k = _shape(state, "blocks.0.conv.conv.weight", path, 3)
    if k != 5:
        raise InputError(f"'blocks.0.conv.conv.weight' has kernel {k}, expected 5", path)
    for i in (1, 2, 3):
        _shape(state, f"blocks.{i}.tdnn1.conv.conv.weight", path, 3)
    if any(key.startswith("blocks.4.") for key in state):
        raise InputError("more SE-Res2 blocks than ECAPA-TDNN's 3 (key 'blocks.4.*')", path)
    mfa, mfa_in, _ = _shape(state, "mfa.conv.conv.weight", path, 3)
    if mfa_in != 3 * C:
        raise InputError(f"'mfa.conv.conv.weight' takes {mfa_in} channels, expected 3 x {C}", path)
    attention, attn_in, _ = _shape(state, "asp.tdnn.conv.conv.weight", path, 3)
    se_channels = _shape(state, "blocks.1.se_block.conv1.conv.weight", path, 3)[0]
    embed_dim = _shape(state, "fc.conv.weight", path, 3)[0]
    res2 = {m.group(1) for key in state if (m := re.match(r"blocks\.1\.res2net_block\.blocks\.(\d+)\.", key))}
    return {
        "n_mels": n_mels,
        "channels": C,
        "mfa_channels": mfa,
        "attention_channels": attention,
        "se_channels": se_channels,
        "scale": len(res2) + 1,
        "embed_dim": embed_dim,
        "global_context": attn_in == 3 * mfa,
    }


class _TagLoader(yaml.SafeLoader):
    """YAML loader that reads hyperpyyaml's ``!new:``/``!ref``/``!name:`` tags as plain values."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
        return {"__tag__": suffix, **value}
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return {"__tag__": suffix, "__value__": loader.construct_scalar(node)}  # type: ignore[arg-type]


_TagLoader.add_multi_constructor("!", _any_tag)


def _resolve(value: Any, top: dict[str, Any]) -> Any:
    """``!ref <name>`` -> the top-level value ``name`` (one level; other expressions stay strings)."""
    if isinstance(value, dict) and value.get("__tag__") == "ref":
        m = re.fullmatch(r"<([\w.]+)>", str(value.get("__value__", "")).strip())
        return top.get(m.group(1)) if m else value.get("__value__")
    if isinstance(value, list):
        return [_resolve(v, top) for v in value]
    return value


def _hyperparams(path: Path) -> dict[str, Any]:
    """The settings of ``hyperparams.yaml`` that matter here (plain values), checked against what the
    encoder reproduces."""
    try:
        top = yaml.load(path.read_text(encoding="utf-8"), Loader=_TagLoader)  # noqa: S506 - SafeLoader subclass
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise InputError(f"cannot read hyperparams ({type(err).__name__})", path) from None
    if not isinstance(top, dict):
        raise InputError("hyperparams is not a YAML mapping", path)
    out: dict[str, Any] = {}
    for section in ("embedding_model", "compute_features", "mean_var_norm", "mean_var_norm_emb"):
        node = top.get(section)
        if isinstance(node, dict):
            out[section] = {k: _resolve(v, top) for k, v in node.items() if k != "__tag__"}
            out[section]["class"] = str(node.get("__tag__", ""))
    model = out.get("embedding_model", {})
    if model and not model["class"].endswith("ECAPA_TDNN"):
        raise InputError(f"embedding_model is {model['class'] or 'not a class'}, not an ECAPA_TDNN", path)
    for section, defaults in (("embedding_model", _ARCH_DEFAULTS), ("compute_features", _FBANK_DEFAULTS)):
        for key, value in out.get(section, {}).items():
            if key in defaults and defaults[key] is not None and value != defaults[key]:
                raise InputError(f"{section}.{key} = {value!r} is not supported (only {defaults[key]!r})", path)
    return out


def _emb_norm(path: Path, embed_dim: int) -> tuple[Tensor, Tensor]:
    stats = _load(path)
    tensors = []
    for key in ("glob_mean", "glob_std"):
        value = stats.get(key)
        if not isinstance(value, Tensor):
            raise InputError(f"not SpeechBrain InputNormalization statistics (no tensor {key!r})", path)
        if value.numel() != embed_dim:
            raise InputError(f"{key!r} has {value.numel()} values, the embeddings have {embed_dim}", path)
        tensors.append(value.detach().float().reshape(embed_dim))
    return tensors[0], tensors[1]


def speechbrain_to_spkemb(state: dict[str, Any], model: nn.Module, path: Path) -> dict[str, Tensor]:
    """SpeechBrain ``ECAPA_TDNN`` state dict -> the state dict of ``model`` (a ``speechbrain-ecapa``);
    a key that has no place in it, or a shape that does not fit, is named in an InputError."""
    target = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = _rename(str(key))
        if new not in target or not isinstance(value, Tensor):
            raise InputError(f"key {key!r} does not fit SpeechBrain's ECAPA-TDNN", path)
        want = target[new]
        if value.ndim == want.ndim + 1 and value.shape[-1] == 1:  # 1x1 Conv1d -> Linear
            value = value.squeeze(-1)
        if tuple(value.shape) != tuple(want.shape):
            raise InputError(f"key {key!r} has shape {tuple(value.shape)}, expected {tuple(want.shape)}", path)
        out[new] = value.detach().to(want.dtype)
    missing = [k for k in target if k not in out and not k.startswith("emb_") and not k.endswith("num_batches_tracked")]
    if missing:
        raise InputError(f"no key {_peer_key(missing[0])!r} ({len(missing)} missing)", path)
    return out


def import_model(src: Path) -> nn.Module:
    """The ``speechbrain-ecapa`` encoder of the SpeechBrain model folder (or checkpoint file) ``src``."""
    src = Path(src)
    folder = src if src.is_dir() else src.parent
    ckpt = src / EMBEDDING_FILE if src.is_dir() else src
    if not ckpt.is_file():
        raise InputError(f"no {EMBEDDING_FILE} (a SpeechBrain ECAPA-TDNN model folder holds one)", src)
    state = _load(ckpt)
    dims = _dims_from_shapes(state, ckpt)
    hp_path = folder / HYPERPARAMS_FILE
    peer = _hyperparams(hp_path) if hp_path.is_file() else {}
    emb_cfg = peer.get("mean_var_norm_emb", {})
    sample_rate = peer.get("compute_features", {}).get("sample_rate", 16000)
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise InputError(f"compute_features.sample_rate = {sample_rate!r} is not a rate in Hz", hp_path)
    model = build_encoder(
        "speechbrain-ecapa", sample_rate=sample_rate, emb_std_norm=emb_cfg.get("std_norm") is True, **dims
    )
    weights = speechbrain_to_spkemb(state, model, ckpt)
    files = [ckpt]
    norm_path = folder / EMB_NORM_FILE
    if norm_path.is_file():
        weights["emb_mean"], weights["emb_std"] = _emb_norm(norm_path, dims["embed_dim"])
        files.append(norm_path)
    if hp_path.is_file():
        files.append(hp_path)
    model.load_state_dict(weights, strict=False)
    model.eval()
    model.extra = {  # type: ignore[assignment]  # a plain attribute the CLI saves
        "imported": {
            "format": "speechbrain",
            "source": str(src.resolve()),
            "sha256": {p.name: file_sha256(p) for p in files},
            "peer_config": {"dims_from": "tensor shapes", **dims, "hyperparams": peer or None},
            "embedding_norm": norm_path.is_file(),
        }
    }
    return model
