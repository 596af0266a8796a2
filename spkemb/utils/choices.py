"""The vocabularies that several commands share, stated once and torch-free (the CLI reads them at
import time to offer choices and completions without loading torch)."""

from __future__ import annotations

import re
from typing import Literal

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: ``extract --precision`` adds int8: dynamic int8 matrix products through onnxruntime, CPU only
#: (:mod:`spkemb.embeddings.quantize`); training has no int8
EXTRACT_PRECISIONS: tuple[str, ...] = (*PRECISIONS, "int8")
#: training adds auto: bf16 where the device computes it natively, else fp32
#: (:func:`spkemb.utils.runtime.resolve_precision`)
TrainPrecision = Literal["auto", "fp32", "bf16", "fp16"]
TRAIN_PRECISIONS: tuple[str, ...] = ("auto", *PRECISIONS)

Optimizer = Literal["adamw", "sgd"]
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")

#: ``--device`` values: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def is_device_spec(spec: str) -> bool:
    """Whether ``spec`` is a ``--device`` value: auto, cpu, cuda or cuda:N."""
    return bool(DEVICE_RE.match(spec.strip().lower()))
