"""Atomic file writes: a temporary file beside the target, fsync, rename. A crash or a failed run
never leaves half a file where a whole one is expected, and never clobbers the previous one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: str | Path, mode: str, write: Callable[[IO[Any]], None]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(p.parent)
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic_write(path, "w", lambda f: f.write(text))


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> Path:
    def write(f: IO[Any]) -> None:
        f.write(data)

    return _atomic_write(path, "wb", write)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    import torch

    return _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file (the same path after resolving links, or hard links)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve(strict=False) == pb.resolve(strict=False)


def refuse_output_onto_inputs(output: str | Path | None, inputs: dict[str, str | Path | None]) -> None:
    """Raise :class:`~spkemb.errors.InputError` when ``output`` is one of the command's ``inputs``
    (``{"manifest": path, ...}``; ``None`` and ``-`` entries are ignored), or an existing folder.

    Called before any work, so that ``-o`` can never replace a model, a manifest or a store that the
    same command reads.
    """
    from spkemb.errors import InputError

    if output is None or str(output) == "-":
        return
    out = Path(output)
    for what, src in inputs.items():
        if src is None or str(src) == "-":
            continue
        if same_file(out, src):
            raise InputError(f"the output is the command's {what} input; choose another -o", out)
    if out.is_dir():
        raise InputError("the output is an existing folder; -o must name a file", out)
