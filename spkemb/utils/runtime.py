"""Device and precision choices shared by extraction and training."""

from __future__ import annotations

import contextlib
import os

import torch

from spkemb.errors import InputError
from spkemb.utils.choices import EXTRACT_PRECISIONS, PRECISIONS, is_device_spec

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` = CUDA if available else CPU; ``cuda`` under torchrun = ``cuda:LOCAL_RANK``; ``cuda:N``
    is checked against the devices present. Asking for CUDA where there is none is an InputError."""
    spec = (spec or "auto").strip().lower()
    if spec == "cpu":
        return torch.device("cpu")
    if not is_device_spec(spec):
        raise InputError(f"`device` must be auto, cpu, cuda or cuda:N, not {spec!r}")
    if not torch.cuda.is_available():
        if spec == "auto":
            return torch.device("cpu")
        raise InputError(f"`device` {spec}: CUDA is not available on this machine (use `device` cpu)")
    if spec in ("auto", "cuda"):
        index = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else torch.cuda.current_device()
    else:
        try:
            index = int(spec.split(":", 1)[1])
        except ValueError:
            raise InputError(f"`device` must be auto, cpu, cuda or cuda:N, not {spec!r}") from None
    if index >= torch.cuda.device_count():
        raise InputError(f"`device` {spec}: no CUDA device {index} (this machine has {torch.cuda.device_count()})")
    return torch.device("cuda", index)


def check_precision(precision: str, device: torch.device, choices: tuple[str, ...] = PRECISIONS) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (None: none), or an InputError where ``device`` cannot run it.
    int8 (extraction only: ``choices`` = EXTRACT_PRECISIONS) needs no autocast: the encoder is quantised."""
    if precision not in choices:
        raise InputError(f"`precision` {precision}: choose {', '.join(choices)}")
    if precision == "int8" and device.type != "cpu":
        raise InputError(
            f"`precision` int8 runs on the CPU only (onnxruntime's dynamic int8), not on {device}; "
            "use `device` cpu, or bf16/fp16 on CUDA"
        )
    if precision == "fp16" and device.type == "cpu":
        raise InputError("`precision` fp16 needs a CUDA device; on the CPU use bf16 (fast with AMX/AVX512-BF16)")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"`precision` bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16")
    return _DTYPES[precision]


def cpu_has_bf16() -> bool:
    """Whether this CPU has the instructions that make bf16 matrix products fast (AVX512-BF16 or AMX).

    torch's own probes (private, so a torch without them counts as having them: no false alarm)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(p is None or bool(p()) for p in probes)


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI (AVX512-VNNI or AVX-VNNI): int8 dot products without an int16 step.

    torch's own probe (private, so a torch without it counts as having it)."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    return True if probe is None else bool(probe())


def emulated_bf16(precision: str, device: torch.device) -> str | None:
    """A notice where bf16 would run emulated: on a CPU without AVX512-BF16 or AMX, oneDNN converts to
    fp32 and back around every product, which is far slower than fp32 itself."""
    if precision != "bf16" or device.type != "cpu" or cpu_has_bf16():
        return None
    return (
        "`precision` bf16 on this CPU (no AVX512-BF16 or AMX instructions) is emulated and far slower than fp32 "
        "(ECAPA C=512 forward on an AVX2-only AMD EPYC: 16 audio-s/s against 121 in fp32); use `precision` fp32 here"
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where ``device`` computes it natively (a CUDA device with bf16, a CPU with
    AVX512-BF16 or AMX), else fp32; any other precision as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast region for bf16/fp16, or a null context for fp32 (and int8, whose encoder is quantised)."""
    dtype = check_precision(precision, device, EXTRACT_PRECISIONS)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_threads(threads: int | None) -> None:
    """Intra-op threads for the main process (default: all cores, but at least 1)."""
    if threads:
        torch.set_num_threads(max(1, threads))


def worker_init(_: int) -> None:
    """DataLoader workers decode audio; one torch thread each keeps them off the model's cores.
    They ignore SIGINT: a Ctrl-C reaches the whole process group, and the main process (which
    checkpoints and then shuts the workers down) is the one to act on it."""
    import signal

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def tune_cpu_allocator() -> bool:
    """Stop glibc from handing freed activation memory back to the OS after every batch.

    Encoders allocate and free tens to thousands of megabytes of activations per batch. By default
    glibc serves large blocks with fresh ``mmap`` s and trims the heap after freeing them, so every
    batch pays page faults on first touch: on a small VM that cost 20-35 % of CPU extraction time,
    and training at batch 64 ran at half speed. This raises the mmap threshold to its maximum and
    turns heap trimming off, so the process keeps what it freed for the next batch (its resident
    memory stays at its peak, which the next batch needs again). An earlier version set both
    thresholds to 1 GiB: larger blocks were still mapped afresh every step, and batch 128 or 3-s
    crops at C=256 trained at two thirds of the speed they reach now, fp32 extraction at 155
    instead of 222 audio-s/s. Process-wide: call it once at the start of a CLI command that runs a
    model on the CPU, not on import. Returns False (and does nothing) where glibc is not the C library.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 2**31 - 1) == 1  # the largest C int: only huge blocks get their own mmap
    return bool(mallopt(m_trim_threshold, -1) == 1 and ok)  # -1: never trim (man mallopt)
