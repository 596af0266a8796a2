"""Export an encoder to ONNX: the whole encoder, front-end included, from waveforms to embeddings.

The graph takes what ``encoder(wav, lengths)`` takes, so the features are computed inside it exactly as
torch computes them (the encoder's own front-end: its Fbank / MFCC settings are in the embedded config),
and ``spkemb extract model.onnx`` feeds it the same padded batches as a torch encoder:

========== ======= ================== ====================================================================
name       dtype   shape              meaning
========== ======= ================== ====================================================================
waveform   float32 (batch, samples)   mono audio at the model's sample rate (metadata ``sample_rate``),
                                      samples in [-1, 1]; rows shorter than ``samples`` zero-padded
lengths    int64   (batch,)           valid samples of each row (padding beyond is ignored)
embedding  float32 (batch, embed_dim) the embedding (not length-normalised, as the torch encoder's)
========== ======= ================== ====================================================================

``batch`` and ``samples`` are dynamic axes. The model's ``metadata_props`` hold ``spkemb_format``
(``spkemb-onnx``), ``encoder_config`` (JSON), ``sample_rate``, ``embed_dim``, ``source_sha256`` (the
encoder file's checksum), ``spkemb_version`` and ``opset``.

The graph is traced (TorchScript-based ``torch.onnx.export``) on a padded batch of two rows, so the
encoders' masked path (the one that handles padding) is the one recorded; the front-end's STFT is
traced as a convolution with a windowed DFT basis (:func:`exportable`: the same spectrum in operators
the exporter can write; ``torch.stft``'s complex output it cannot). After writing, the export
runs the file in onnxruntime on another batch and length and refuses (nothing left at ``-o``) when
any embedding's cosine to torch's is below :data:`MIN_COSINE`.

``speechbrain-ecapa``'s centred STFT is traced the same way (zero padding, then the DFT convolution).
The encoders on the Kaldi fbank front-end (:mod:`spkemb.models.kaldi_fbank`: ``campplus``, ``eres2net``,
``wespeaker-resnet``, ``wespeaker-ecapa``, the WeSpeaker and 3D-Speaker imports) are refused before
tracing (:class:`InputError`, one line): they run each utterance on its own frames in a Python loop
through ``kaldi.fbank``'s real FFT, which the tracer cannot record with dynamic batch and time axes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spkemb.errors import InputError, WorkError
from spkemb.utils.fileio import fsync_dir, sibling_path

__all__ = [
    "ONNX_FORMAT",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "MIN_COSINE",
    "export_onnx",
    "require_onnx",
    "session",
    "OnnxExport",
]

ONNX_FORMAT = "spkemb-onnx"
INPUT_NAMES = ("waveform", "lengths")
OUTPUT_NAMES = ("embedding",)
MIN_COSINE = 0.9999
DEFAULT_OPSET = 17
INSTALL_HINT = "pip install 'spkemb[onnx]'"


def require_onnx(*modules: str) -> None:
    """Refuse (:class:`InputError`, one line) when ``modules`` (onnx, onnxruntime) are not installed."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"ONNX needs {' and '.join(missing)}, which is not installed: {INSTALL_HINT}")


def session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``path`` (``threads``: intra-op threads; default torch's)."""
    require_onnx("onnxruntime")
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _dft_basis(n_fft: int, win: int, window: torch.Tensor) -> torch.Tensor:
    """(2F, 1, n_fft) cosine and minus-sine rows times the window (centred in n_fft, as torch.stft does)."""
    full = torch.zeros(n_fft, dtype=torch.float64)
    left = (n_fft - win) // 2
    full[left : left + win] = window.double()
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    n = torch.arange(n_fft, dtype=torch.float64)[None]
    angle = 2 * torch.pi * k * n / n_fft
    return torch.cat([torch.cos(angle) * full, -torch.sin(angle) * full]).float()[:, None, :]


class _DftSpeechBrainFbank(nn.Module):
    """:class:`~spkemb.models.speechbrain_ecapa.SpeechBrainFbank` with its centred (zero-padded) STFT as a
    DFT convolution; the rest of its forward (mel filters, dB, top_db clip, sentence mean) unchanged."""

    def __init__(self, fbank: Any) -> None:
        super().__init__()
        self.fbank = fbank
        self.register_buffer("basis", _dft_basis(fbank.n_fft, fbank.win, fbank.window), persistent=False)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from spkemb.features import frame_mask
        from spkemb.models.speechbrain_ecapa import AMIN

        fb = self.fbank
        wav = wav.float()
        pad = fb.n_fft // 2  # torch.stft(center=True, pad_mode="constant")
        x = nn.functional.pad(wav, (pad, pad)).unsqueeze(1)
        basis: torch.Tensor = self.basis  # type: ignore[assignment]  # a registered buffer
        y = nn.functional.conv1d(x, basis, stride=fb.hop)  # (B, 2F, T)
        n_freq = basis.shape[0] // 2
        re, im = y[:, :n_freq], y[:, n_freq:]
        power = (re * re + im * im).transpose(1, 2)  # (B, T, F)
        db = 10.0 * torch.log10(torch.clamp(power @ fb.filters, min=AMIN))
        B, T, _ = db.shape
        full = torch.full((B,), T, dtype=torch.long, device=wav.device)
        frames = full if lengths is None else fb.frames(lengths.to(wav.device)).clamp(max=T)
        valid = frame_mask(frames, T).unsqueeze(2)
        peak = db.masked_fill(~valid, float("-inf")).amax(dim=(1, 2)) - fb.top_db
        db = torch.maximum(db, peak.view(B, 1, 1))
        n = frames.to(db.dtype).view(B, 1, 1)
        mean = (db * valid).sum(dim=1, keepdim=True) / n
        return (db - mean) * valid, frames


class _DftSpectrogram(nn.Module):
    """torchaudio's ``Spectrogram`` (no centring, no padding, one-sided, power 1 or 2) as a strided
    convolution with a windowed DFT basis: the same numbers as ``torch.stft`` (to float32 rounding), in
    operators every ONNX runtime has (the TorchScript exporter cannot write a complex STFT)."""

    def __init__(self, spec: Any) -> None:
        super().__init__()
        n_fft, win, self.hop = int(spec.n_fft), int(spec.win_length), int(spec.hop_length)
        self.power = float(spec.power)
        self.register_buffer("basis", _dft_basis(n_fft, win, spec.window), persistent=False)
        self.n_freq = n_fft // 2 + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        shape = waveform.shape
        x = waveform.reshape(-1, 1, shape[-1])
        basis: torch.Tensor = self.basis  # type: ignore[assignment]  # a registered buffer
        y = nn.functional.conv1d(x, basis, stride=self.hop)  # (N, 2F, T)
        re, im = y[:, : self.n_freq], y[:, self.n_freq :]
        power = re * re + im * im
        out = power if self.power == 2.0 else torch.sqrt(power)
        return out.reshape(shape[:-1] + out.shape[-2:])


def _replaceable(spec: nn.Module) -> bool:
    return (
        not spec.center
        and not spec.pad
        and not spec.normalized
        and spec.onesided in (True, None)
        and spec.power in (1.0, 2.0)
    )


def _shifted_taps(x: torch.Tensor, kernel: int, dilation: int) -> torch.Tensor:
    """ECAPA's tap stacking (:func:`spkemb.models.ecapa._shifted_taps`: frame t + (j - kernel//2)*dilation for
    tap j, zero outside the signal) without in-place writes into a view, which the TorchScript exporter
    records wrongly: pad the time axis, then concatenate the shifted slices."""
    if kernel == 1:
        return x
    T, pad = x.shape[1], (kernel // 2) * dilation
    xp = nn.functional.pad(x, (0, 0, pad, pad))
    return torch.cat([xp[:, j * dilation : j * dilation + T] for j in range(kernel)], dim=2)


@contextlib.contextmanager
def _traceable() -> Iterator[None]:
    """While tracing: the encoders' helpers that write in place into views, in out-of-place form."""
    from spkemb.models import ecapa

    original = ecapa._shifted_taps
    ecapa._shifted_taps = _shifted_taps
    try:
        yield
    finally:
        ecapa._shifted_taps = original


def _frame_lengths(win: int, hop: int, lengths: torch.Tensor) -> torch.Tensor:
    from spkemb.features import frame_count

    out = frame_count(lengths, win, hop)
    assert isinstance(out, torch.Tensor)
    return out


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose torchaudio ``Spectrogram`` modules are :class:`_DftSpectrogram` (the
    others as they are); ``model`` itself is left unchanged."""
    import copy

    import torchaudio

    from spkemb.features import Fbank

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, Fbank):  # its frame_lengths goes through torch.as_tensor, a constant to the tracer
            module.frame_lengths = functools.partial(_frame_lengths, module.win, module.hop)  # type: ignore[method-assign]
    from spkemb.models.speechbrain_ecapa import SpeechBrainFbank

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torchaudio.transforms.Spectrogram) and _replaceable(child):
                setattr(parent, name, _DftSpectrogram(child))
            elif isinstance(child, SpeechBrainFbank):
                setattr(parent, name, _DftSpeechBrainFbank(child))
    return model


class _Graph(nn.Module):
    """``encoder(waveform, lengths)`` with float32 output, the module that is traced."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder(waveform, lengths).float()


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote and how closely onnxruntime follows torch on its check batch."""

    path: Path
    min_cosine: float
    max_abs_diff: float
    check_shape: tuple[int, int]
    opset: int


def _example(sr: int, seconds: tuple[float, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = [max(1, int(s * sr)) for s in seconds]
    wav = torch.zeros(len(n), max(n))
    for i, k in enumerate(n):
        wav[i, :k] = 0.1 * torch.randn(k, generator=g)
    return wav, torch.tensor(n, dtype=torch.int64)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(num / np.maximum(den, 1e-12))


def _metadata(model: nn.Module, sha: str, opset: int) -> dict[str, str]:
    from spkemb import __version__

    return {
        "spkemb_format": ONNX_FORMAT,
        "encoder_config": json.dumps(getattr(model, "config", {}), sort_keys=True),
        "sample_rate": str(int(getattr(model, "sample_rate"))),  # noqa: B009
        "embed_dim": str(int(getattr(model, "embed_dim"))),  # noqa: B009
        "source_sha256": sha,
        "spkemb_version": __version__,
        "opset": str(opset),
        "max_seconds": str(getattr(model, "max_seconds", None) or ""),
        "inputs": "waveform float32 (batch, samples); lengths int64 (batch,)",
        "outputs": "embedding float32 (batch, embed_dim)",
    }


def _trace(graph: nn.Module, example: tuple[torch.Tensor, torch.Tensor], tmp: Path, opset: int) -> None:
    # (not under no_grad: the TorchScript exporter then trips on the encoders' in-place slice copies)
    with warnings.catch_warnings(), _traceable():
        warnings.simplefilter("ignore")  # tracer warnings about Python values: the check below is the judge
        torch.onnx.export(
            graph,
            example,
            str(tmp),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={"waveform": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _check(graph: nn.Module, path: Path, sr: int, threads: int | None) -> tuple[float, float, tuple[int, int]]:
    """Run the file in onnxruntime on a batch unlike the traced one: (min cosine, max |diff|, shape)."""
    wav, lengths = _example(sr, (1.3, 2.1, 0.7), seed=1)
    with torch.no_grad():
        ref = graph(wav, lengths).numpy()
    out = session(path, threads).run(None, {"waveform": wav.numpy(), "lengths": lengths.numpy()})[0]
    if out.shape != ref.shape:
        return 0.0, float("inf"), (int(out.shape[0]), -1)
    return float(_cosines(ref, out).min()), float(np.abs(ref - out).max()), (int(out.shape[0]), int(out.shape[1]))


def _refuse_unexportable(model: nn.Module) -> None:
    """Refuse, before tracing, the encoders whose graph the tracer cannot record (:class:`InputError`)."""
    from spkemb.models.kaldi_fbank import KaldiFbank

    if any(isinstance(m, KaldiFbank) for m in model.modules()):
        name = getattr(model, "config", {}).get("name", type(model).__name__)
        raise InputError(
            f"ONNX export does not support {name}'s Kaldi fbank front-end (one utterance at a time, kaldi.fbank's "
            "FFT): the tracer cannot record it; extract with the encoder.pt itself",
            getattr(model, "source", None),
        )


def export_onnx(
    model: nn.Module, out: str | Path, sha: str = "", opset: int = DEFAULT_OPSET, threads: int | None = None
) -> OnnxExport:
    """Write ``model`` as an ONNX graph at ``out`` (atomically: a temporary file, checked, then renamed)."""
    require_onnx("onnx", "onnxruntime")
    import onnx

    out = Path(out)
    _refuse_unexportable(model)
    model = model.cpu().eval()
    sr = int(getattr(model, "sample_rate"))  # noqa: B009
    graph = _Graph(exportable(model)).eval()
    tmp = sibling_path(out, ".tmp.onnx", prefix=".")
    try:
        try:
            _trace(graph, _example(sr, (3.0, 2.0), seed=0), tmp, opset)
        except Exception as err:  # the exporter's many failure kinds: the operator it cannot write
            first = " ".join(str(err).split())[:240] or type(err).__name__
            raise WorkError(f"{out}: torch.onnx.export failed for this encoder ({first})") from None
        proto = onnx.load(str(tmp))
        for key, value in _metadata(model, sha, opset).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = "spkemb encoder: waveform (batch, samples) + lengths (batch,) -> embedding (batch, D)"
        onnx.save(proto, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        cos, diff, shape = _check(_Graph(model).eval(), tmp, sr, threads)
        if cos < MIN_COSINE:
            raise WorkError(
                f"{out}: the exported graph does not follow torch (min cosine {cos:.6f} < {MIN_COSINE}, max "
                f"difference {diff:.3g}); nothing was written"
            )
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return OnnxExport(out, cos, diff, shape, opset)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file (as strings)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
