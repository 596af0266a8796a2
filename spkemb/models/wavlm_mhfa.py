"""WavLM + MHFA: a WavLM frontend (Chen et al. 2022) pooled by multi-head factorised attentive pooling
(Peng et al., SLT 2022), the encoder of the pseudo-label recipe of Miara et al. 2024.

The WavLM is torchaudio's (``torchaudio.models.wavlm_model``; this module and
:mod:`spkemb.models.wavlm_weights` are the only models importing torchaudio's model builders). Its
weights come from a local file (``frontend_weights``: a torchaudio state dict or a Hugging Face folder,
see :mod:`~spkemb.models.wavlm_weights`) or are random. MHFA takes the hidden states of the chosen
layers (0 = the transformer's input, 1..N its layers) and forms

* keys = softmax(w_k)-weighted sum of the layers, compressed to ``compression_dim``; a linear map
  gives ``heads`` attention logits per frame, softmax over the (valid) frames of each head;
* values = softmax(w_v)-weighted sum of the layers, compressed to ``compression_dim``;
* per head the attention-weighted mean of the values; the heads concatenated and projected to
  ``embed_dim``.

Padding is exact: the feature extractor's group norm (base sizes) uses the valid frames only, the
transformer masks padded keys and MHFA padded frames, so a padded batch equals each utterance alone.

``encoder.pt`` holds the WavLM weights, so its config has ``frontend_weights: null``; the path given
at training time stays in the experiment's ``config.yaml``. Long utterances: ``max_seconds``
(20 s) is honoured by ``spkemb extract`` as its default ``--chunk``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from spkemb.models.registry import register_encoder
from spkemb.models.wavlm_weights import CONV_LAYOUT, PRESETS, WavLMArch, build_wavlm, load_frontend_weights
from spkemb.options import Options, opt

__all__ = ["WavLMMHFA", "WavLMMHFAOptions", "MHFA"]

Size = Literal["base", "base-plus", "large"]
MIN_SAMPLES = 400  # the receptive field of one frame (25 ms at 16 kHz)


@dataclass
class WavLMMHFAOptions(Options):
    """WavLM + MHFA options: the WavLM size (dims below override the size's), the MHFA head, training."""

    size: Size = opt("base-plus", "WavLM size: base | base-plus | large (the dims below override it)")
    num_layers: int | None = opt(None, "transformer layers (none: the size's, 12 or 24)")
    hidden: int | None = opt(None, "transformer width (none: 768, large 1024)")
    attention_heads: int | None = opt(None, "WavLM self-attention heads (none: 12, large 16)")
    ffn_dim: int | None = opt(None, "feed-forward width (none: 3072, large 4096)")
    conv_dim: int | None = opt(None, "channels of the 7 convolutions of the feature extractor (none: 512)")
    pos_conv_kernel: int | None = opt(None, "kernel of the convolutional position embedding (none: 128)")
    pos_conv_groups: int | None = opt(None, "groups of the convolutional position embedding (none: 16)")
    dropout: float = opt(0.0, "dropout inside WavLM (attention, feed-forward, hidden states)")
    normalize_waveform: bool | None = opt(
        None, "zero-mean unit-variance input per utterance (none: large only, as the published models were trained)"
    )
    heads: int = opt(64, "MHFA attention heads")
    compression_dim: int = opt(128, "MHFA key and value compression size")
    embed_dim: int = opt(256, "embedding size")
    layers: tuple[int, ...] | None = opt(
        None,
        "hidden states MHFA pools: 0 = the transformer's input, 1..N its "
        "layers (none: all); layers above the highest are dropped",
    )
    freeze_frontend: bool = opt(False, "keep WavLM fixed (eval mode, no gradients): only MHFA trains")
    freeze_cnn: bool = opt(
        False,
        "keep WavLM's convolutional feature extractor fixed (as wav2vec 2.0 / WavLM "
        "finetuning usually does; its backward pass is most of a CPU step)",
    )
    gradient_checkpointing: bool = opt(False, "recompute transformer layers in the backward pass (less memory)")
    frontend_weights: str | None = opt(
        None,
        "WavLM weights to start from: a torchaudio state dict or a Hugging "
        "Face folder (config.json + model.safetensors or pytorch_model.bin)",
    )
    max_seconds: float | None = opt(
        20.0,
        "extract embeds longer utterances in windows of this length and "
        "averages them (attention is quadratic in length); none: whole",
    )

    def __post_init__(self) -> None:
        if self.size not in PRESETS:
            raise ValueError(f"size must be one of {', '.join(PRESETS)}, got {self.size!r}")
        for key in (
            "num_layers",
            "hidden",
            "attention_heads",
            "ffn_dim",
            "conv_dim",
            "pos_conv_kernel",
            "pos_conv_groups",
        ):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1")
        arch = self.arch()
        if arch.hidden % arch.attention_heads or arch.hidden % arch.pos_conv_groups:
            raise ValueError(f"hidden ({arch.hidden}) must divide by attention_heads and pos_conv_groups")
        if min(self.heads, self.compression_dim, self.embed_dim) < 1 or not 0 <= self.dropout < 1:
            raise ValueError("heads, compression_dim and embed_dim must be positive, dropout in [0, 1)")
        if self.layers is not None and (
            not self.layers
            or not all(0 <= i <= arch.num_layers for i in self.layers)
            or len(set(self.layers)) != len(self.layers)
        ):
            raise ValueError(f"layers must be distinct indices in 0..{arch.num_layers}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError("max_seconds must be positive (or none)")

    def arch(self) -> WavLMArch:
        """The WavLM shape: the size's preset with the explicit dims applied."""
        base = PRESETS[self.size]
        conv = base.conv_layers if self.conv_dim is None else tuple((self.conv_dim, k, s) for k, s in CONV_LAYOUT)
        pick: dict[str, Any] = {
            "num_layers": self.num_layers, "hidden": self.hidden, "attention_heads": self.attention_heads,
            "ffn_dim": self.ffn_dim, "pos_conv_kernel": self.pos_conv_kernel, "pos_conv_groups": self.pos_conv_groups,
        }  # fmt: skip
        return replace(base, conv_layers=conv, **{k: v for k, v in pick.items() if v is not None})


class MHFA(nn.Module):
    """Multi-head factorised attentive pooling over a list of (B, T, D) hidden states."""

    def __init__(self, n_layers: int, in_dim: int, heads: int, compression_dim: int, out_dim: int) -> None:
        super().__init__()
        # Zeros: a uniform softmax over the layers at the start (the reference code's ones).
        self.weights_k = nn.Parameter(torch.zeros(n_layers))
        self.weights_v = nn.Parameter(torch.zeros(n_layers))
        self.compress_k = nn.Linear(in_dim, compression_dim)
        self.compress_v = nn.Linear(in_dim, compression_dim)
        self.att_head = nn.Linear(compression_dim, heads)
        self.proj = nn.Linear(heads * compression_dim, out_dim)

    def mix_weights(self) -> tuple[Tensor, Tensor]:
        """The softmax layer weights of the keys and of the values."""
        return torch.softmax(self.weights_k.float(), dim=0), torch.softmax(self.weights_v.float(), dim=0)

    def pool(self, k: Tensor, v: Tensor, pad: Tensor | None = None) -> Tensor:
        """(B, T, D) layer-mixed keys and values -> (B, out_dim); ``pad``: (B, T) True on padded frames."""
        k = self.compress_k(k)
        v = self.compress_v(v)
        logits = self.att_head(k).float()  # (B, T, H)
        if pad is not None:
            logits = logits.masked_fill(pad.unsqueeze(2), float("-inf"))
        att = torch.softmax(logits, dim=1)
        pooled = torch.einsum("bth,btc->bhc", att, v.float())  # (B, H, C)
        return self.proj(pooled.reshape(pooled.shape[0], -1).to(self.proj.weight.dtype))

    def forward(self, hidden: list[Tensor], pad: Tensor | None = None) -> Tensor:
        """``hidden``: one (B, T, D) tensor per layer; ``pad``: (B, T) True on padded frames."""
        wk, wv = self.mix_weights()
        k = sum((h * w.to(h.dtype) for h, w in zip(hidden, wk, strict=True)), torch.zeros_like(hidden[0]))
        v = sum((h * w.to(h.dtype) for h, w in zip(hidden, wv, strict=True)), torch.zeros_like(hidden[0]))
        return self.pool(k, v, pad)


class _LayerMix:
    """Running weighted sums of the hidden states MHFA pools, so that no more than two are kept."""

    def __init__(self, layer_ids: list[int], weights: tuple[Tensor, Tensor]) -> None:
        self.index = {layer: j for j, layer in enumerate(layer_ids)}
        self.weights = weights
        self.sums: list[Tensor | None] = [None, None]

    def add(self, layer: int, h: Tensor) -> None:
        j = self.index.get(layer)
        if j is None:
            return
        for s, w in enumerate(self.weights):
            term = h * w[j].to(h.dtype)
            acc = self.sums[s]
            self.sums[s] = term if acc is None else acc + term


def _conv_frames(frames: Tensor, kernel: int, stride: int) -> Tensor:
    return torch.clamp(torch.div(frames - kernel, stride, rounding_mode="floor") + 1, min=0)


def _masked_group_norm(x: Tensor, frames: Tensor, norm: nn.GroupNorm) -> Tensor:
    """GroupNorm with one group per channel over the valid frames of (B, C, T) ``x`` only."""
    mask = (torch.arange(x.shape[2], device=x.device) < frames.unsqueeze(1)).unsqueeze(1)  # (B, 1, T)
    xf = x.float()
    n = frames.clamp(min=1).to(xf.dtype).view(-1, 1, 1)
    mean = (xf * mask).sum(dim=2, keepdim=True) / n
    var = ((xf - mean).square() * mask).sum(dim=2, keepdim=True) / n
    y = (xf - mean) * torch.rsqrt(var + norm.eps)
    if norm.affine:
        y = y * norm.weight.view(1, -1, 1) + norm.bias.view(1, -1, 1)
    return y.to(x.dtype)


@register_encoder("wavlm-mhfa")
class WavLMMHFA(nn.Module):
    """WavLM (torchaudio) + MHFA; see the module docstring."""

    Options = WavLMMHFAOptions

    def __init__(self, options: WavLMMHFAOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = options.replace(**kwargs) if options else WavLMMHFAOptions(**kwargs)
        # encoder.pt holds the WavLM weights: its config must not point at (or need) the file again.
        self.config = {"name": "wavlm-mhfa", **o.replace(frontend_weights=None).to_dict()}
        self.sample_rate = 16000
        self.embed_dim = int(o.embed_dim)
        self.max_seconds = o.max_seconds
        self.arch = arch = o.arch()
        self.wavlm = build_wavlm(arch, o.dropout)
        #: one line saying which weights were loaded (None: random WavLM)
        self.frontend_loaded: str | None = None
        if o.frontend_weights:
            self.frontend_loaded = load_frontend_weights(self.wavlm, arch, o.frontend_weights, o.size)
        self.layer_ids = list(o.layers) if o.layers is not None else list(range(arch.num_layers + 1))
        top = max(self.layer_ids)
        wavlm: Any = self.wavlm
        del wavlm.encoder.transformer.layers[top:]  # never computed: no dead parameters (DDP, optimiser)
        large_style = arch.extractor_mode == "layer_norm"  # the published large model saw normalised input
        self.normalize = large_style if o.normalize_waveform is None else o.normalize_waveform
        self.mhfa = MHFA(len(self.layer_ids), arch.hidden, o.heads, o.compression_dim, o.embed_dim)
        if o.freeze_frontend:
            self.wavlm.requires_grad_(False)
        elif o.freeze_cnn:
            self.wavlm.feature_extractor.requires_grad_(False)
        #: WavLM runs without gradients and dropout (``freeze_frontend``, or a warm-up: :meth:`set_frontend_frozen`)
        self.frontend_frozen = bool(o.freeze_frontend)

    def set_frontend_frozen(self, frozen: bool) -> None:
        """Run WavLM without gradients and dropout, or not: a frozen warm-up in which MHFA and the head
        learn first (``finetune``'s ``freeze_frontend_steps``). Unlike the ``freeze_frontend`` option,
        the parameters keep ``requires_grad`` and simply get no gradient, so the optimiser and DDP see
        the same parameters before and after."""
        if self.options.freeze_frontend and not frozen:
            raise ValueError("this encoder was built with freeze_frontend=true: its frontend stays frozen")
        self.frontend_frozen = bool(frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> WavLMMHFA:
        super().train(mode)
        if self.frontend_frozen:
            self.wavlm.eval()  # a frozen frontend runs without dropout
        return self

    def layers(self) -> list[nn.Module]:
        """Bottom-up blocks for layer-wise learning-rate decay: the convolutional frontend (with the
        projection and position embedding), each transformer layer, then MHFA."""
        w: Any = self.wavlm  # torchaudio's Wav2Vec2Model (its submodules are untyped)
        enc = w.encoder
        bottom = nn.ModuleList(
            [w.feature_extractor, enc.feature_projection, enc.transformer.pos_conv_embed, enc.transformer.layer_norm]
        )
        return [bottom, *enc.transformer.layers, self.mhfa]

    def _conv_features(self, wav: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The convolutional feature extractor, (B, S) -> (B, T, C), with exact masking of padding.
        In inference it runs one utterance at a time: its first layers' activations (512 channels at
        3,200 frames a second) are the largest tensors of the model."""
        if not self.training and not torch.is_grad_enabled() and wav.shape[0] > 1:
            parts = [
                self._conv_features(wav[i : i + 1], None if lengths is None else lengths[i : i + 1])
                for i in range(wav.shape[0])
            ]
            frames = None if lengths is None else torch.cat([f for _, f in parts if f is not None])
            return torch.cat([x for x, _ in parts]), frames
        x = wav.unsqueeze(1)
        frames = lengths
        w: Any = self.wavlm
        for layer in w.feature_extractor.conv_layers:
            x = layer.conv(x)
            if frames is not None:
                frames = _conv_frames(frames, layer.kernel_size, layer.stride)
            norm = layer.layer_norm
            if isinstance(norm, nn.GroupNorm) and frames is not None and bool((frames < x.shape[2]).any()):
                x = _masked_group_norm(x, frames, norm)
            elif norm is not None:
                x = norm(x)
            x = F.gelu(x)
        return x.transpose(1, 2), frames

    def _prepare(self, wav: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if wav.shape[1] < MIN_SAMPLES:
            wav = F.pad(wav, (0, MIN_SAMPLES - wav.shape[1]))
        if lengths is not None:
            lengths = lengths.to(wav.device).clamp(min=MIN_SAMPLES, max=wav.shape[1])
            if bool((lengths >= wav.shape[1]).all()):
                lengths = None
        if self.normalize:
            valid = None if lengths is None else (torch.arange(wav.shape[1], device=wav.device) < lengths[:, None])
            n = wav.shape[1] if lengths is None else lengths.unsqueeze(1)
            w = wav.float() if valid is None else wav.float() * valid
            mean = w.sum(1, keepdim=True) / n
            d = (w - mean) if valid is None else (w - mean) * valid
            wav = ((wav.float() - mean) * torch.rsqrt(d.square().sum(1, keepdim=True) / n + 1e-7)).to(wav.dtype)
            if valid is not None:
                wav = wav * valid
        return wav, lengths

    def _run(self, wav: Tensor, lengths: Tensor | None, visit: Callable[[int, Tensor], None]) -> Tensor | None:
        """Run WavLM on (B, S) ``wav``, handing each hidden state (0 = the transformer's input, then each
        layer's output; (B, T, hidden)) to ``visit`` as it is made; return the (B, T) padding mask (True
        on padded frames; ``None`` without padding). A frozen frontend runs without gradients, while
        ``visit`` (MHFA's layer weights) keeps them."""
        frozen = self.frontend_frozen
        grad_mode = torch.no_grad if frozen else contextlib.nullcontext
        cnn_grad_mode = torch.no_grad if frozen or self.options.freeze_cnn else contextlib.nullcontext

        w: Any = self.wavlm
        enc = w.encoder
        wav, lengths = self._prepare(wav, lengths)
        with cnn_grad_mode():
            x, frames = self._conv_features(wav, lengths)
        with grad_mode():
            x = enc.feature_projection(x)
            pad = None
            if frames is not None:
                frames = frames.clamp(min=1)
                pad = torch.arange(x.shape[1], device=x.device).unsqueeze(0) >= frames.unsqueeze(1)
                x = x.masked_fill(pad.unsqueeze(2), 0.0)
            x = enc.transformer._preprocess(x)
        visit(0, x)
        bias: Tensor | None = None
        ckpt = self.options.gradient_checkpointing and self.training and torch.is_grad_enabled() and not frozen
        # An additive float32 mask (-inf on padded keys), of the relative position bias's dtype (no warning).
        key_mask = None if pad is None else torch.zeros(pad.shape, device=x.device).masked_fill(pad, float("-inf"))
        for i, layer in enumerate(enc.transformer.layers, start=1):
            with grad_mode():
                if ckpt:
                    x, bias = checkpoint(layer, x, None, bias, key_mask, use_reentrant=False)
                else:
                    x, bias = layer(x, None, position_bias=bias, key_padding_mask=key_mask)
            visit(i, x)
        return pad

    def hidden_states(self, wav: Tensor, lengths: Tensor | None = None) -> tuple[list[Tensor], Tensor | None]:
        """Every computed hidden state of (B, S) ``wav`` (0 = the transformer's input, then each layer's
        output), each (B, T, hidden), and the (B, T) padding mask (``None`` without padding)."""
        out: list[Tensor] = []
        pad = self._run(wav, lengths, lambda _i, h: out.append(h))
        return out, pad

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        mix = _LayerMix(self.layer_ids, self.mhfa.mix_weights())
        pad = self._run(wav, lengths, mix.add)
        k, v = mix.sums
        assert k is not None and v is not None  # layer_ids is never empty
        return self.mhfa.pool(k, v, pad)
