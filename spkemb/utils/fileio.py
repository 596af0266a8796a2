"""Atomic file writes: a temporary file beside the target, fsync, rename. A crash or a failed run
never leaves half a file where a whole one is expected, and never clobbers the previous one.

Temporary and lock files live beside their target and are named after it (``.NAME.xxxx.tmp``,
``NAME.partial``, ``.NAME.lock``) while that fits the file system's 255-byte limit on a name; for a
longer target name they are named after a hash of it instead (:func:`sibling_path`), so that an
output whose own name is near the limit can still be written, and its partial file found again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: str | Path, mode: str, write: Callable[[IO[Any]], object]) -> Path:
    p = Path(path)
    if p.exists() and not p.is_file() and not p.is_dir():
        # A device or a pipe (-o /dev/null, -o /dev/stdout, a FIFO): write into it. Renaming a temporary
        # file over it would replace the device node itself (as root, /dev/null became a regular file).
        with open(p, mode, encoding=None if "b" in mode else "utf-8") as f:
            write(f)
        return p
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{_fitting(p.name, 24)}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(p.parent)
    return p


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems


def _fitting(name: str, extra: int) -> str:
    """``name``, or a 16-hex-digit hash of it when ``name`` plus ``extra`` bytes would not fit in a name."""
    if len(os.fsencode(name)) + extra <= NAME_MAX:
        return name
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:16]


def sibling_path(path: str | Path, suffix: str, prefix: str = "") -> Path:
    """``prefix + NAME + suffix`` beside ``path``, with NAME replaced by a short hash of it when the
    result would exceed :data:`NAME_MAX` bytes. The same ``path`` always gives the same name."""
    p = Path(path)
    return p.with_name(prefix + _fitting(p.name, len(os.fsencode(prefix + suffix))) + suffix)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic_write(path, "w", lambda f: f.write(text))


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> Path:
    def write(f: IO[Any]) -> None:
        f.write(data)

    return _atomic_write(path, "wb", write)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    import torch

    return _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def fsync_dir(d: Path) -> None:
    """Make a rename in folder ``d`` durable (where the platform allows)."""
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


def refuse_output_onto_inputs(
    output: str | Path | None,
    inputs: Mapping[str, str | Path | None] | Iterable[tuple[str, str | Path | None]],
    *,
    folder: bool = False,
    option: str = "-o",
) -> None:
    """Raise :class:`~spkemb.errors.InputError` when ``output`` is one of the command's ``inputs``
    (``{"manifest": path, ...}``, or ``(what, path)`` pairs when two inputs are of one kind; ``None``
    and ``-`` entries are ignored), or an existing folder
    (unless ``folder``: the output is itself a folder). ``option`` names the output in the message.

    Called before any work, so that ``-o`` can never replace a model, a manifest or a store that the
    same command reads.
    """
    from spkemb.errors import InputError

    if output is None or str(output) == "-":
        return
    out = Path(output)
    for what, src in inputs.items() if isinstance(inputs, Mapping) else inputs:
        if src is None or str(src) == "-":
            continue
        if same_file(out, src):
            raise InputError(f"the output is the command's {what} input; choose another {option}", out)
    if not folder and out.is_dir():
        raise InputError(f"the output is an existing folder; {option} must name a file", out)


class OutputGroup:
    """The outputs of one run, all written or none: each file is written to a temporary beside its
    target (fsynced), and only when every one is written are they renamed into place. A failure while
    writing any of them (a full disk for the last plot) removes the temporaries and leaves every
    existing output as it was. A device or pipe (``/dev/null``) is written at commit time.

    ``with OutputGroup() as out: out.write_bytes(p, data); ...`` commits on a clean exit.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target)
        self._devices: list[tuple[Path, bytes | memoryview]] = []

    def write_bytes(self, path: str | Path, data: bytes | memoryview) -> None:
        p = Path(path)
        if p.exists() and not p.is_file() and not p.is_dir():
            self._devices.append((p, data))
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{_fitting(p.name, 24)}.", suffix=".tmp", dir=p.parent)
        self._staged.append((Path(tmp), p))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)

    def write_text(self, path: str | Path, text: str) -> None:
        self.write_bytes(path, text.encode("utf-8"))

    def discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged, self._devices = [], []

    def commit(self) -> None:
        for p, data in self._devices:
            with open(p, "wb") as f:
                f.write(data)
        for tmp, target in self._staged:
            os.replace(tmp, target)
        for folder in {target.parent for _, target in self._staged}:
            fsync_dir(folder)
        self._staged, self._devices = [], []

    def __enter__(self) -> OutputGroup:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
