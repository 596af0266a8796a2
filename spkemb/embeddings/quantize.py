"""int8 inference on the CPU: the encoder's matrix products in dynamic int8, through onnxruntime.

The encoder is exported as an ONNX graph (:func:`~spkemb.models.onnx_export.export_onnx`, the same
graph ``export-model --onnx`` writes) and onnxruntime's ``quantize_dynamic`` turns its MatMul/Gemm
weights into int8 (per output channel; activations are quantised per batch at run time). The
front-end (DFT convolution, mel matrix) stays float32: a power spectrum's dynamic range does not survive
8 bits (with the mel MatMul in int8 a trained ECAPA's embeddings fell to cosine 0.36; without, 0.99997).
So does the first matrix product after it, the layer that reads the features: with it in int8 too, a
trained ECAPA's test-other EER moved 0.11 points on an AVX2 CPU (least cosine 0.99972); kept in float,
it did not move (0.99981), at no measurable cost in speed.
PyTorch's ``quantize_dynamic`` was not used: it swaps
``nn.Linear`` modules, and ECAPA calls its weights through fused oneDNN linears (``models.ecapa._linear``),
so nothing would change. The quantised graph is checked against the float encoder on synthetic audio
before use: below :data:`MIN_COSINE` it is refused (exit 2), never run.

On a CPU without VNNI (AVX2 only) the weights are quantised to 7 bits (``reduce_range``): there
onnxruntime's u8 x s8 products add pairs in int16 and saturate, and a random ECAPA C=512 came out at
cosine 0.904 to fp32 with 8-bit weights, refused, against >= 0.99 with 7 (onnxruntime's documented
remedy); with VNNI the full 8 bits are kept.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spkemb.errors import InputError, WorkError

__all__ = ["MIN_COSINE", "UNSUPPORTED", "quantize_int8"]

#: the least cosine of an int8 embedding to the float one, on the check's synthetic audio
MIN_COSINE = 0.99
#: encoders refused: WavLM's graph (attention, relative positions, 95 M parameters) was not verified
UNSUPPORTED = ("wavlm-mhfa",)


def _name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(config.get("name", type(model).__name__)) if isinstance(config, dict) else type(model).__name__


def quantize_int8(model: nn.Module, threads: int | None = None) -> nn.Module:
    """``model`` as an onnxruntime session with int8 weights, behind the encoder interface
    (:class:`~spkemb.embeddings.onnx_runner.OnnxEncoder`). An encoder that cannot be exported or that
    loses more than :data:`MIN_COSINE` is one :class:`InputError`."""
    from spkemb.embeddings.onnx_runner import OnnxEncoder
    from spkemb.models.onnx_export import require_onnx, session

    name = _name(model)
    if name in UNSUPPORTED or name == "OnnxEncoder":
        what = "an ONNX model (quantise its encoder.pt instead)" if name == "OnnxEncoder" else f"encoder {name}"
        raise InputError(f"`precision` int8 does not support {what}; use fp32 or bf16")
    require_onnx("onnx", "onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from spkemb.models.onnx_export import export_onnx
    from spkemb.utils.runtime import cpu_has_vnni

    model = model.cpu().eval()
    with tempfile.TemporaryDirectory(prefix="spkemb-int8-") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        try:
            export_onnx(model, fp32, threads=threads)
        except WorkError as err:
            raise InputError(f"`precision` int8: encoder {name} cannot be quantised ({err})") from None
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # (its pre-processing hint)
        import onnx

        front = float_nodes(onnx.load(str(fp32)).graph.node)
        quantize_dynamic(
            str(fp32),
            str(int8),
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=front,
            per_channel=True,
            weight_type=QuantType.QInt8,
            reduce_range=not cpu_has_vnni(),
        )
        sess = session(int8, threads)  # (the session holds the graph: the files may go)
        meta = dict(sess.get_modelmeta().custom_metadata_map)
        encoder = OnnxEncoder(int8, sess, meta)
    encoder.config = {**getattr(model, "config", {}), "runtime": "onnxruntime-int8"}
    encoder.extra = {"precision": "int8"}
    encoder.source = str(getattr(model, "source", ""))
    cos = _check(model, encoder)
    if cos < MIN_COSINE:
        raise InputError(f"`precision` int8: encoder {name} loses too much in int8 (cosine {cos:.4f} < {MIN_COSINE})")
    return encoder


def float_nodes(nodes: Iterable[Any]) -> list[str]:
    """The graph nodes kept in float: the front-end's, and the first matrix product after it (the layer
    that reads the features), in graph order."""
    nodes = list(nodes)
    keep = [n.name for n in nodes if "frontend" in n.name]
    first = next((n.name for n in nodes if n.op_type in ("MatMul", "Gemm") and "frontend" not in n.name), None)
    return keep + ([first] if first is not None else [])


def _check(model: nn.Module, encoder: nn.Module, seconds: tuple[float, ...] = (4.0, 2.5)) -> float:
    """The least cosine between float and int8 embeddings of a padded batch of noise (a guard against a
    broken graph; the quality figure is measured on speech: benchmarks/README.md, "int8")."""
    sr = int(getattr(model, "sample_rate", 16000))
    g = torch.Generator().manual_seed(0)
    n = int(max(seconds) * sr)
    wav = 0.1 * torch.randn(len(seconds), n, generator=g)
    lengths = torch.tensor([int(s * sr) for s in seconds])
    for i, length in enumerate(lengths.tolist()):
        wav[i, length:] = 0
    with torch.inference_mode():
        a = model(wav, lengths).float().numpy()
        b = encoder(wav, lengths).float().numpy()
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(cos.min())
