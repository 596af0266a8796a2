"""WavLM architectures (torchaudio's model) and their weights read from local files.

Two layouts are read, nothing is ever downloaded:

* **torchaudio**: a state dict of ``torchaudio.models.wavlm_model`` (``torch.save(model.state_dict())``),
  possibly wrapped in ``{"state_dict": ...}`` or ``{"model": ...}``; ``.safetensors`` files too.
* **Hugging Face**: a folder with ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``)
  of a ``WavLMModel`` (keys may carry the ``wavlm.`` prefix of the task models), or such a weights
  file alone. Keys are converted to torchaudio's (the mapping of
  ``torchaudio.models.wav2vec2.utils.import_huggingface_model``, written on state dicts so that
  ``transformers`` is not needed): q/k/v projections are concatenated into ``in_proj``.

Files load with ``torch.load(weights_only=True)`` or ``safetensors`` only. Anything wrong (missing,
corrupt, truncated, another model, another size) raises :class:`~spkemb.errors.InputError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spkemb.errors import InputError

__all__ = ["WavLMArch", "PRESETS", "build_wavlm", "arch_from_hf_config", "hf_to_torchaudio", "torchaudio_to_hf",
           "read_weights", "load_frontend_weights"]  # fmt: skip

#: the convolutional feature extractor of every published WavLM: (channels, kernel, stride), 320 samples a frame
CONV_LAYOUT: tuple[tuple[int, int], ...] = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2))


@dataclass(frozen=True)
class WavLMArch:
    """The shape of a WavLM (what must agree between a weights file and the model it goes into)."""

    extractor_mode: str  # group_norm (base, base-plus) | layer_norm (large)
    conv_layers: tuple[tuple[int, int, int], ...]  # (channels, kernel, stride)
    conv_bias: bool
    hidden: int
    num_layers: int
    attention_heads: int
    ffn_dim: int
    pos_conv_kernel: int
    pos_conv_groups: int
    num_buckets: int
    max_distance: int
    layer_norm_first: bool

    def describe(self) -> str:
        return f"{self.num_layers} layers x {self.hidden} ({self.attention_heads} heads, ffn {self.ffn_dim})"

    def differences(self, other: WavLMArch) -> list[str]:
        """``name: mine vs other`` for every field that differs."""
        a, b = asdict(self), asdict(other)
        return [f"{k} {_show(b[k])} (encoder: {_show(a[k])})" for k in a if a[k] != b[k]]


def _show(v: Any) -> str:
    if isinstance(v, list | tuple) and v and isinstance(v[0], list | tuple):
        return "[" + ", ".join("x".join(str(int(n)) for n in t) for t in v) + "]"
    return str(v)


def _preset(mode: str, hidden: int, layers: int, heads: int, ffn: int, ln_first: bool) -> WavLMArch:
    return WavLMArch(
        mode, tuple((512, k, s) for k, s in CONV_LAYOUT), False, hidden, layers, heads, ffn, 128, 16, 320, 800, ln_first
    )


#: the published sizes (base and base-plus share the architecture; base-plus saw more data)
PRESETS: dict[str, WavLMArch] = {
    "base": _preset("group_norm", 768, 12, 12, 3072, False),
    "base-plus": _preset("group_norm", 768, 12, 12, 3072, False),
    "large": _preset("layer_norm", 1024, 24, 16, 4096, True),
}


def build_wavlm(arch: WavLMArch, dropout: float = 0.0) -> nn.Module:
    """torchaudio's WavLM (``Wav2Vec2Model``) of shape ``arch``, randomly initialised as WavLM's own code
    does (see :func:`init_random`), no layer drop."""
    from torchaudio.models import wavlm_model

    model = wavlm_model(
        extractor_mode=arch.extractor_mode, extractor_conv_layer_config=[tuple(c) for c in arch.conv_layers],
        extractor_conv_bias=arch.conv_bias, encoder_embed_dim=arch.hidden, encoder_projection_dropout=dropout,
        encoder_pos_conv_kernel=arch.pos_conv_kernel, encoder_pos_conv_groups=arch.pos_conv_groups,
        encoder_num_layers=arch.num_layers, encoder_num_heads=arch.attention_heads,
        encoder_num_buckets=arch.num_buckets, encoder_max_distance=arch.max_distance,
        encoder_attention_dropout=dropout, encoder_ff_interm_features=arch.ffn_dim, encoder_ff_interm_dropout=dropout,
        encoder_dropout=dropout, encoder_layer_norm_first=arch.layer_norm_first, encoder_layer_drop=0.0,
        aux_num_out=None,
    )  # fmt: skip
    init_random(model)
    return model


def init_random(model: nn.Module) -> None:
    """The initialisation of WavLM's (fairseq's) code: He-normal convolutions in the feature extractor,
    BERT's N(0, 0.02) for the transformer's linear layers and embeddings (zero biases). PyTorch's
    defaults instead shrink the signal through the seven convolutions to about 1e-4, below the
    projection's layer-norm epsilon, so that a random model's output hardly depends on its input."""
    for m in model.modules():
        if isinstance(m, nn.Conv1d) and m.groups == 1:
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)


# --- Hugging Face config and key names -----------------------------------------------------------------------------


def arch_from_hf_config(cfg: Mapping[str, Any], path: str | Path) -> WavLMArch:
    """The architecture a Hugging Face ``config.json`` describes; refuse what is not a WavLM."""
    model_type = cfg.get("model_type")
    if model_type != "wavlm":
        raise InputError(f"config.json: model_type {model_type!r} is not a WavLM (expected 'wavlm')", path)
    try:
        conv = tuple(
            (int(d), int(k), int(s))
            for d, k, s in zip(cfg["conv_dim"], cfg["conv_kernel"], cfg["conv_stride"], strict=True)
        )
        return WavLMArch(
            extractor_mode=f"{cfg.get('feat_extract_norm', 'group')}_norm", conv_layers=conv,
            conv_bias=bool(cfg.get("conv_bias", False)), hidden=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]), attention_heads=int(cfg["num_attention_heads"]),
            ffn_dim=int(cfg["intermediate_size"]), pos_conv_kernel=int(cfg.get("num_conv_pos_embeddings", 128)),
            pos_conv_groups=int(cfg.get("num_conv_pos_embedding_groups", 16)),
            num_buckets=int(cfg.get("num_buckets", 320)), max_distance=int(cfg.get("max_bucket_distance", 800)),
            layer_norm_first=bool(cfg.get("do_stable_layer_norm", False)),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"config.json: not a usable WavLM config ({type(err).__name__}: {err})", path) from None


_HF_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.*)$")
_G, _V = "parametrizations.weight.original0", "parametrizations.weight.original1"


def _weight_norm_names(key: str) -> str:
    """Old-style weight norm (``weight_g``/``weight_v``) as the parametrisation names torchaudio uses."""
    return key.replace("conv.weight_g", f"conv.{_G}").replace("conv.weight_v", f"conv.{_V}")


def hf_to_torchaudio(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Hugging Face ``WavLMModel`` keys -> torchaudio's; returns (state, ignored keys)."""
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        k = _weight_norm_names(key[len("wavlm.") :] if key.startswith("wavlm.") else key)
        m = _HF_LAYER.match(k)
        if k.startswith("feature_extractor.conv_layers."):
            out[k] = value
        elif k.startswith("feature_projection."):
            out["encoder." + k] = value
        elif k.startswith(("encoder.pos_conv_embed.", "encoder.layer_norm.")):
            out["encoder.transformer." + k[len("encoder.") :]] = value
        elif m:
            i, rest = m.group(1), m.group(2)
            proj = re.match(r"attention\.([qkv])_proj\.(weight|bias)$", rest)
            if proj:
                qkv.setdefault(f"{i}.{proj.group(2)}", {})[proj.group(1)] = value
            elif rest.startswith("attention.out_proj."):
                out[f"encoder.transformer.layers.{i}.attention.attention.{rest[len('attention.') :]}"] = value
            else:
                out[f"encoder.transformer.layers.{i}.{rest}"] = value
        else:
            ignored.append(key)  # masked_spec_embed, task heads (projector, classifier, lm_head, ...)
    for name, parts in qkv.items():
        i, kind = name.split(".")
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"layer {i}: {kind} of only the {'/'.join(sorted(parts))} projection(s)")
        out[f"encoder.transformer.layers.{i}.attention.attention.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]]
        )
    return out, ignored


def torchaudio_to_hf(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`hf_to_torchaudio` (Hugging Face ``WavLMModel`` key names), for tests and export."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k.startswith("encoder.feature_projection."):
            out[k[len("encoder.") :]] = v
        elif k.startswith("encoder.transformer."):
            rest = k[len("encoder.transformer.") :]
            m = re.match(r"^layers\.(\d+)\.attention\.attention\.(.*)$", rest)
            if m and m.group(2).startswith("in_proj_"):
                kind = m.group(2)[len("in_proj_") :]
                for name, part in zip("qkv", v.chunk(3), strict=True):
                    out[f"encoder.layers.{m.group(1)}.attention.{name}_proj.{kind}"] = part.clone()
            elif m:
                out[f"encoder.layers.{m.group(1)}.attention.{m.group(2)}"] = v
            else:
                out["encoder." + rest.replace(_G, "weight_g").replace(_V, "weight_v")] = v
        else:
            out[k] = v
    return out


# --- reading files ---------------------------------------------------------------------------------------------------


@dataclass
class FrontendWeights:
    """A weights file read into torchaudio's key names."""

    state: dict[str, Tensor]
    layout: str  # "torchaudio" | "Hugging Face"
    source: str  # what was read, for the summary line
    arch: WavLMArch | None  # from config.json, when there was one
    ignored: list[str]


def _read_tensor_file(path: Path) -> Mapping[str, Any]:
    """A ``.safetensors`` file or a ``torch.load(weights_only=True)`` file, every failure one line."""
    if path.stat().st_size == 0:
        raise InputError("empty weights file", path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - a dependency of spkemb
            raise InputError(
                "reading .safetensors needs the safetensors package (pip install safetensors)", path
            ) from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types (truncated, bad header)
            raise InputError(
                f"not a readable safetensors file (truncated or corrupt?): {_first_line(err)}", path
            ) from None
    from spkemb.models.io import _load_payload

    try:
        payload = _load_payload(path)
    except InputError as err:
        raise InputError(err.message.replace("not a spkemb encoder", "not a weights file"), path) from None
    if not isinstance(payload, Mapping):
        raise InputError(f"not a state dict (a {type(payload).__name__})", path)
    if payload.get("format") == "spkemb-encoder":
        name = (payload.get("config") or {}).get("name", "?")
        raise InputError(
            f"a spkemb encoder file ({name!r}), not WavLM weights (finetune an encoder.pt with --init)", path
        )
    for wrapper in ("state_dict", "model"):
        if isinstance(payload.get(wrapper), Mapping):
            return payload[wrapper]
    return payload


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:160]


def _hf_folder(path: Path) -> tuple[Path, WavLMArch]:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise InputError("a folder of frontend weights needs config.json (a Hugging Face model folder)", path)
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read config.json ({_first_line(err)})", cfg_path) from None
    if not isinstance(cfg, dict):
        raise InputError("config.json is not a JSON object", cfg_path)
    arch = arch_from_hf_config(cfg, cfg_path)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name, arch
    if any(path.glob("*.index.json")):
        raise InputError("sharded checkpoints (*.index.json) are not supported: save the model as one file", path)
    raise InputError("no model.safetensors or pytorch_model.bin in this folder", path)


def read_weights(path: str | Path) -> FrontendWeights:
    """Read WavLM weights (a torchaudio state dict, a Hugging Face folder or file) into torchaudio's names."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError("no such file or folder (frontend weights)", p)
    arch = None
    if p.is_dir():
        p, arch = _hf_folder(p)
    elif not p.is_file():
        raise InputError("not a regular file", p)
    raw = _read_tensor_file(p)
    tensors = {str(k): v for k, v in raw.items() if isinstance(v, Tensor)}
    if not tensors:
        raise InputError("holds no tensors: not a WavLM weights file", p)
    keys = set(tensors)
    if any(k.startswith(("encoder.transformer.", "encoder.feature_projection.")) for k in keys):
        state = {_weight_norm_names(k): v for k, v in tensors.items()}
        ignored = [k for k in state if not k.startswith(("feature_extractor.", "encoder."))]
        return FrontendWeights(
            {k: v for k, v in state.items() if k not in ignored}, "torchaudio", str(p), arch, ignored
        )
    hf_marks = ("feature_projection.projection.weight", "wavlm.feature_projection.projection.weight")
    if keys & set(hf_marks):
        try:
            state, ignored = hf_to_torchaudio(tensors)
        except ValueError as err:
            raise InputError(f"incomplete WavLM attention weights: {err}", p) from None
        return FrontendWeights(state, "Hugging Face", str(p), arch, ignored)
    example = sorted(keys)[0]
    raise InputError(f"not WavLM weights in torchaudio or Hugging Face layout (first key {example!r})", p)


def load_frontend_weights(model: nn.Module, arch: WavLMArch, path: str | Path, size: str = "") -> str:
    """Copy the weights at ``path`` into torchaudio WavLM ``model`` of shape ``arch``; return one line
    saying what was loaded. Missing tensors, other shapes, a config.json of another size and
    non-finite values raise :class:`InputError` (``model`` is then unchanged)."""
    w = read_weights(path)
    where = w.source
    hint = "; set the encoder's size (e.g. size=large) or dims to match" if size else ""
    if w.arch is not None and w.arch != arch:
        diff = "; ".join(arch.differences(w.arch)[:3])
        raise InputError(f"these weights are another WavLM: {diff}{hint}", where)
    target = model.state_dict()
    missing = [k for k in target if k not in w.state]
    if missing:
        raise InputError(
            f"not a complete WavLM: {len(missing)} of {len(target)} tensors missing (e.g. "
            f"{missing[0]}; a wav2vec 2.0 / HuBERT model?)",
            where,
        )
    for k, t in target.items():
        if tuple(w.state[k].shape) != tuple(t.shape):
            raise InputError(
                f"{k} is {tuple(w.state[k].shape)} in the file, {tuple(t.shape)} in the encoder "
                f"(another WavLM size: the encoder is {arch.describe()}){hint}",
                where,
            )
        if w.state[k].is_floating_point() and not bool(torch.isfinite(w.state[k]).all()):
            raise InputError(f"{k} holds NaN or infinite values (a corrupt file?)", where)
    extra = [k for k in w.state if k not in target]
    model.load_state_dict({k: w.state[k] for k in target}, strict=True)
    n = sum(t.numel() for t in target.values())
    ignored = len(w.ignored) + len(extra)
    return (
        f"frontend weights: WavLM {arch.describe()}{f' ({size})' if size else ''} from {where} ({w.layout} "
        f"layout): {len(target)} tensors, {n / 1e6:.1f}M parameters"
        + (f"; {ignored} other tensor(s) ignored" if ignored else "")
    )
