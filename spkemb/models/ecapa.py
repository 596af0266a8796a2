"""ECAPA-TDNN (Desplanques, Thienpondt and Demuynck, Interspeech 2020).

Fbank (80) -> Conv1d(k=5) -> 3 SE-Res2Blocks (k=3, dilation 2, 3, 4, scale 8) -> multi-layer
feature aggregation (concatenated block outputs -> 1x1 conv to 1536 channels) -> channel- and
context-dependent attentive statistics pooling -> BN -> FC -> BN (192-d).
Every conv is Conv1d -> ReLU -> BatchNorm, as in the paper.

Implementation notes (speed; the maths is the paper's):

* Activations are kept time-major, (B, T, C). A 1x1 conv is then a plain matrix product
  (``F.linear``) and a dilated conv of kernel k is one matrix product over the k shifted copies of its
  (narrow) input, so the CPU spends its time in GEMMs without layout conversions.
* The attention's global context (mean and std of each channel, constant over time) is not
  concatenated to every frame: its part of the first attention layer is computed once per utterance.
* Padding in a batch is handled exactly: the inputs of every layer wider than one frame are zeroed
  past each utterance's end, and squeeze-excitation and pooling average over the valid frames only,
  so a padded batch gives the same embeddings as each utterance alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spkemb.features import Fbank, frame_mask
from spkemb.models.registry import register_encoder
from spkemb.options import Options, opt

__all__ = ["ECAPA"]

# --- fp32 on the CPU ------------------------------------------------------------------------------
# PyTorch sends float32 matrix products to MKL, which on non-Intel CPUs runs at about half the speed
# of oneDNN. The products go through oneDNN's linear instead (the op behind torch.compile's CPU
# fusions), with the ReLU fused into it: directly when no gradient is needed (extraction,
# evaluation), and in training through _OneDNNLinear, whose backward runs in oneDNN too.
try:
    _LINEAR_POINTWISE = torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
except (AttributeError, RuntimeError):
    _LINEAR_POINTWISE = None


def _onednn(a: Tensor, w: Tensor, bias: Tensor | None = None, relu: bool = False) -> Tensor:
    """``a @ w.T + bias`` (then ReLU) of 2-D fp32 tensors through oneDNN (no autograd)."""
    assert _LINEAR_POINTWISE is not None
    return _LINEAR_POINTWISE(a, w, bias, "relu" if relu else "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """fp32 ``linear`` (+ ReLU) on the CPU with oneDNN's GEMM forward and backward.

    With gradients PyTorch sends fp32 products to MKL, which on non-Intel CPUs runs its AVX2 code at
    about half oneDNN's speed; SpeechBrain's ``Conv1d`` layers run in oneDNN. The backward is the
    same two products as ``F.linear``'s (grad_x = g W through oneDNN, grad_W = g^T x).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
        y = _onednn(x, w, bias, relu)
        ctx.relu, ctx.has_bias = relu, bias is not None
        ctx.save_for_backward(x, w, y if relu else None)
        return y

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        x, w, y = ctx.saved_tensors
        g = grads[0]
        g = torch.ops.aten.threshold_backward(g, y, 0) if ctx.relu else g.contiguous()
        gx = _onednn(g, w.t().contiguous()) if ctx.needs_input_grad[0] else None
        # g^T x through oneDNN would need both (rows, C) operands transposed first: no faster than MKL
        gw = g.t().mm(x) if ctx.needs_input_grad[1] else None
        gb = g.sum(dim=0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


def _linear(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, cols: int | None = None, relu: bool = False
) -> Tensor:
    """``F.linear(x, weight[:, :cols], bias)`` (then ReLU), through oneDNN for fp32 on the CPU."""
    global _LINEAR_POINTWISE
    w = weight if cols is None else weight[:, :cols]
    if (
        _LINEAR_POINTWISE is not None
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and x.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()  # (ONNX export: the graph holds the plain linear)
    ):
        try:
            x2 = x.reshape(-1, x.shape[-1]).contiguous()
            if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
                y = _OneDNNLinear.apply(x2, w.contiguous(), bias, relu)
            else:
                y = _onednn(x2, w.contiguous(), bias, relu)
            return y.view(*x.shape[:-1], y.shape[-1])
        except RuntimeError as err:  # an unusual build: use the ordinary path from now on
            _LINEAR_POINTWISE = None
            warnings.warn(f"oneDNN linear unavailable, using the default path ({err})", stacklevel=2)
    y = F.linear(x, w, bias)
    return torch.relu_(y) if relu else y


def _shifted_taps(x: Tensor, kernel: int, dilation: int) -> Tensor:
    """(B, T, C) -> (B, T, kernel*C): the frames t + (j - kernel//2)*dilation, zero outside [0, T)."""
    if kernel == 1:
        return x
    B, T, C = x.shape
    half = kernel // 2
    out = x.new_zeros(B, T, kernel * C)
    for j in range(kernel):
        s = (j - half) * dilation  # this tap reads frame t + s
        dst = out[:, :, j * C : (j + 1) * C]
        if s == 0:
            dst.copy_(x)
        elif abs(s) < T:
            if s > 0:
                dst[:, : T - s].copy_(x[:, s:])
            else:
                dst[:, -s:].copy_(x[:, : T + s])
    return out


class _Dense(nn.Module):
    """Conv1d(k, dilation) -> ReLU -> BatchNorm on time-major (B, T, C) activations.

    The weight is stored as a linear layer over the ``kernel`` shifted copies of the input
    (in-features ordered tap-major: [tap 0 channels, tap 1 channels, ...]).
    """

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError("kernel must be odd")
        self.kernel, self.dilation = kernel, dilation
        # Initialised exactly as nn.Conv1d(cin, cout, kernel) would be (the same random draws).
        # nn.Linear's own init is undone by restoring the generator (nn.utils.skip_init and
        # Module.to_empty would avoid it but import sympy: 0.4-0.6 s of every command's start-up).
        rng = torch.get_rng_state()
        self.linear = nn.Linear(kernel * cin, cout)
        torch.set_rng_state(rng)
        with torch.no_grad():
            w = torch.empty(cout, cin, kernel)
            nn.init.kaiming_uniform_(w, a=5**0.5)
            self.linear.weight.copy_(w.permute(0, 2, 1).reshape(cout, kernel * cin))
            bound = 1 / (cin * kernel) ** 0.5
            self.linear.bias.uniform_(-bound, bound)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: Tensor) -> Tensor:
        h = _linear(_shifted_taps(x, self.kernel, self.dilation), self.linear.weight, self.linear.bias, relu=True)
        bn = self.bn
        if (
            not bn.training
            and _no_grad(h)
            and bn.running_var is not None
            and bn.running_mean is not None
            and bn.weight is not None
            and bn.bias is not None
        ):
            # Inference: BatchNorm with running statistics is an affine map; apply it in place.
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
            return torch.addcmul(shift.to(h.dtype), h, scale.to(h.dtype), out=h)
        B, T, C = h.shape
        return bn(h.reshape(B * T, C)).view(B, T, C)


def _no_grad(t: Tensor) -> bool:
    """True when no gradient flows through ``t``, so it may be overwritten in place."""
    return not (torch.is_grad_enabled() and t.requires_grad)


def _mul(a: Tensor, b: Tensor) -> Tensor:
    """``a * b``, in place in ``a`` (a fresh intermediate) when no gradient is needed."""
    return a.mul_(b) if _no_grad(a) and _no_grad(b) and a.dtype == torch.promote_types(a.dtype, b.dtype) else a * b


def _masked_time_mean(x: Tensor, mask: Tensor | None, frames: Tensor | None) -> Tensor:
    """Mean over time (dim 1) of (B, T, C) ``x`` on the valid frames."""
    if mask is None or frames is None:
        return x.mean(dim=1)
    return (x * mask).sum(dim=1) / frames.to(x.dtype).unsqueeze(1)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, bottleneck)
        self.fc2 = nn.Linear(bottleneck, channels)

    def forward(self, x: Tensor, mask: Tensor | None, frames: Tensor | None) -> Tensor:
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(_masked_time_mean(x, mask, frames)))))
        return _mul(x, s.unsqueeze(1).to(x.dtype))


class _SERes2Block(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int, scale: int, se_channels: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels ({channels}) must be divisible by scale ({scale})")
        width = channels // scale
        self.scale = scale
        self.conv1 = _Dense(channels, channels)
        self.res2 = nn.ModuleList(_Dense(width, width, kernel, dilation) for _ in range(scale - 1))
        self.conv3 = _Dense(channels, channels)
        self.se = _SqueezeExcite(channels, se_channels)

    def forward(self, x: Tensor, mask: Tensor | None, frames: Tensor | None) -> Tensor:
        h = self.conv1(x)
        if mask is not None:
            h = _mul(h, mask)
        parts = h.chunk(self.scale, dim=2)
        outs = [parts[0]]
        y = None
        for i, layer in enumerate(self.res2, start=1):
            y = layer(parts[i] if y is None else parts[i] + y)
            if mask is not None:
                y = _mul(y, mask)
            outs.append(y)
        h = self.se(self.conv3(torch.cat(outs, dim=2)), mask, frames)
        return h.add_(x) if _no_grad(h) and _no_grad(x) else h + x


class _AttentiveStatsPool(nn.Module):
    """Channel- and context-dependent attentive statistics pooling.

    The attention logit of channel c at frame t is ``v_c . tanh(BN(ReLU(W [h_t; mean; std] + b)))``
    where mean and std are the (masked) global statistics of the utterance; the softmax over the
    valid frames weights the mean and standard deviation that are returned (B, 2C), in float32.
    The output layer has no bias: a per-channel constant does not change a softmax over time.
    """

    def __init__(self, channels: int, attention_channels: int, global_context: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.global_context = global_context
        self.attn = _Dense(3 * channels if global_context else channels, attention_channels)
        self.attn_out = nn.Linear(attention_channels, channels, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        C = self.channels
        xf = x.float()
        inplace = _no_grad(xf)
        maskf = None if mask is None else mask.float()
        if self.global_context:
            if maskf is None:
                mean, msq = xf.mean(dim=1), xf.square().mean(dim=1)
            else:
                n = maskf.sum(dim=1)  # (B, 1)
                mean = (xf * maskf).sum(dim=1) / n
                msq = _mul(xf.square(), maskf).sum(dim=1) / n
            std = (msq - mean.square()).clamp(min=1e-5).sqrt()
            # W [h_t; mean; std] + b == W_h h_t + (W_ctx [mean; std] + b), the latter once per utterance.
            lin = self.attn.linear
            ctx = torch.addmm(lin.bias, torch.cat([mean, std], dim=1), lin.weight[:, C:].t())
            a = _linear(x, lin.weight, cols=C) + ctx.unsqueeze(1).to(x.dtype)
            B, T, A = a.shape
            if inplace:
                h = torch.tanh_(self.attn.bn(torch.relu_(a).reshape(B * T, A)).view(B, T, A))
            else:
                h = torch.tanh(self.attn.bn(torch.relu(a).reshape(B * T, A)).view(B, T, A))
        else:
            h = torch.tanh(self.attn(x))
        logits = _linear(h, self.attn_out.weight).float()
        if inplace:
            # The same softmax and weighted sums, in one big buffer instead of four.
            if mask is not None:
                logits.masked_fill_(mask == 0, float("-inf"))
            w = logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
            z = w.sum(dim=1)
            wx = w.mul_(xf)
            mu = wx.sum(dim=1) / z
            ex2 = wx.mul_(xf).sum(dim=1) / z
        else:
            if mask is not None:
                logits = logits.masked_fill(mask == 0, float("-inf"))
            w = torch.softmax(logits, dim=1)
            mu = (w * xf).sum(dim=1)
            ex2 = (w * xf.square()).sum(dim=1)
        var = ex2 - mu.square()
        return torch.cat([mu, var.clamp(min=1e-5).sqrt()], dim=1)


@dataclass
class ECAPAOptions(Options):
    """ECAPA-TDNN's options (Desplanques et al. 2020: C=512 or 1024, 192-d)."""

    sample_rate: int = opt(16000, "input sample rate (Hz)")
    n_mels: int = opt(80, "log-mel filterbank channels")
    channels: int = opt(512, "C, channels of the SE-Res2 blocks (512 or 1024 in the paper)")
    embed_dim: int = opt(192, "embedding size")
    mfa_channels: int | None = opt(None, "multi-layer feature aggregation channels (none: 1536, the paper's)")
    attention_channels: int = opt(128, "attentive statistics pooling bottleneck")
    se_channels: int = opt(128, "squeeze-excitation bottleneck")
    scale: int = opt(8, "Res2Net scale (channels must divide by it)")
    global_context: bool = opt(True, "attention sees utterance-level mean and std")

    def __post_init__(self) -> None:
        if self.mfa_channels is None:
            self.mfa_channels = 1536
        if self.channels % self.scale:
            raise ValueError(f"channels ({self.channels}) must be divisible by scale ({self.scale})")


@register_encoder("ecapa")
class ECAPA(nn.Module):
    """ECAPA-TDNN: ``channels`` 512 (or 1024), ``embed_dim`` 192."""

    Options = ECAPAOptions

    def __init__(self, options: ECAPAOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = options.replace(**kwargs) if options else ECAPAOptions(**kwargs)
        self.config = {"name": "ecapa", **o.to_dict()}
        sample_rate, n_mels, channels, embed_dim = o.sample_rate, o.n_mels, o.channels, o.embed_dim
        mfa_channels, attention_channels, se_channels = o.mfa_channels, o.attention_channels, o.se_channels
        scale, global_context = o.scale, o.global_context
        assert mfa_channels is not None  # set by ECAPAOptions.__post_init__
        self.sample_rate = int(sample_rate)
        self.embed_dim = int(embed_dim)
        self.frontend = Fbank(sample_rate=sample_rate, n_mels=n_mels)
        self.layer1 = _Dense(n_mels, channels, kernel=5)
        self.blocks = nn.ModuleList(_SERes2Block(channels, 3, d, scale, se_channels) for d in (2, 3, 4))
        self.mfa = _Dense(3 * channels, mfa_channels)
        self.pool = _AttentiveStatsPool(mfa_channels, attention_channels, global_context)
        self.pool_bn = nn.BatchNorm1d(2 * mfa_channels)
        self.fc = nn.Linear(2 * mfa_channels, embed_dim)
        self.emb_bn = nn.BatchNorm1d(embed_dim)

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        x, frames = self.frontend(wav, lengths)  # (B, T, n_mels), padding already zero
        mask = frames = None if lengths is None or bool((frames >= x.shape[1]).all()) else frames
        x = self.layer1(x)
        if frames is not None:
            mask = frame_mask(frames, x.shape[1]).unsqueeze(2).to(x.dtype)  # (B, T, 1)
            x = x * mask
        outs = []
        for block in self.blocks:
            x = block(x, mask, frames)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=2))
        pooled = self.pool(x, mask)
        return self.emb_bn(self.fc(self.pool_bn(pooled)))
