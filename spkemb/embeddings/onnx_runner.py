"""Run an exported encoder (``spkemb export-model --onnx``) through onnxruntime, as ``extract`` runs a torch one.

:class:`OnnxEncoder` looks like a torch encoder to the extraction loop (``forward(wav, lengths)``,
``embed_dim``, ``sample_rate``, ``config``), so batching, chunking, resuming and the store are the same.
onnxruntime runs on the CPU (the ``onnxruntime`` package's CPUExecutionProvider) in float32: the graph's
dtype. ``--precision bf16`` or ``int8`` with an ``.onnx`` model is refused (exit 2) rather than silently run in fp32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spkemb.errors import InputError
from spkemb.models.onnx_export import ONNX_FORMAT, require_onnx, session

__all__ = ["is_onnx_model", "OnnxEncoder", "load_onnx_encoder", "session"]


def is_onnx_model(spec: str | Path) -> bool:
    """Whether ``spec`` names an ONNX file (by its ``.onnx`` suffix)."""
    return str(spec).lower().endswith(".onnx")


class OnnxEncoder(nn.Module):
    """An ONNX encoder behind the torch encoder interface (no parameters; runs on the CPU)."""

    def __init__(self, path: Path, sess: Any, meta: dict[str, str]) -> None:
        super().__init__()
        self.path, self.sess = path, sess
        self.sample_rate = int(meta["sample_rate"])
        self.embed_dim = int(meta["embed_dim"])
        if meta.get("max_seconds"):  # an encoder that embeds long audio in windows (WavLM's attention)
            self.max_seconds = float(meta["max_seconds"])
        config = json.loads(meta.get("encoder_config") or "{}")
        self.config = {**config, "name": f"{config.get('name', 'encoder')}", "runtime": "onnxruntime"}
        self.extra: dict[str, Any] = {"onnx": str(path), "source_sha256": meta.get("source_sha256", "")}
        self.source = str(path)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.int64)
        feeds = {
            "waveform": np.ascontiguousarray(wav.detach().float().cpu().numpy()),
            "lengths": np.ascontiguousarray(lengths.detach().cpu().numpy().astype(np.int64)),
        }
        out = self.sess.run(None, feeds)[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(wav.device)


def load_onnx_encoder(path: str | Path, precision: str = "fp32", threads: int | None = None) -> OnnxEncoder:
    """Open an ONNX file written by ``spkemb export-model``; anything else is one :class:`InputError`."""
    p = Path(path)
    if precision != "fp32":
        raise InputError(
            f"`precision` {precision}: an ONNX model runs in fp32 through onnxruntime; use `precision` fp32, or "
            f"the encoder.pt for {precision}",
            p,
        )
    if not p.is_file():
        raise InputError("no such ONNX file", p)
    require_onnx("onnxruntime")
    try:
        sess = session(p, threads)
    except Exception as err:  # onnxruntime's Fail / InvalidProtobuf / InvalidGraph ...
        first = " ".join(str(err).split())[:160] or type(err).__name__
        raise InputError(f"not a readable ONNX model ({first})", p) from None
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    names = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
    if meta.get("spkemb_format") != ONNX_FORMAT or names != (["waveform", "lengths"], ["embedding"]):
        raise InputError(
            "not an ONNX encoder written by spkemb export-model (inputs waveform, lengths; output embedding)", p
        )
    try:
        return OnnxEncoder(p, sess, meta)
    except (KeyError, ValueError) as err:
        raise InputError(f"ONNX encoder with bad metadata ({type(err).__name__}: {err})", p) from None
