"""One writer per output: an exclusive lock held for the whole run of a command that writes it.

``with output_lock(path, what="embedding store"): ...`` takes an advisory ``flock`` on the lock file
``.NAME.lock`` beside ``path`` (a file or a folder; see :func:`spkemb.utils.fileio.sibling_path` for long
names), writes the holder's pid and host into it, and removes it on the way out. A second process
asking for the same output is refused at once with an :class:`~spkemb.errors.InputError` that names
the output and the holder (exit status 2 in the CLI): nothing waits, nothing is overwritten.

The kernel drops an ``flock`` when its holder dies, even by ``kill -9``, so a lock file left behind
by a dead process is stale by construction: the next run takes it over without asking. Within one
process the lock is re-entrant (the CLI and the core may both take it). Where the file system
cannot lock (some network mounts), the run goes on unlocked rather than failing.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spkemb.errors import InputError
from spkemb.utils.fileio import sibling_path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

__all__ = ["output_lock", "lock_path"]

_HELD: dict[str, list[int]] = {}  # lock file -> [fd, depth] for the locks this process holds
_GUARD = threading.Lock()
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def lock_path(path: str | Path) -> Path:
    """The lock file of the output ``path``: ``.NAME.lock`` beside it."""
    return sibling_path(Path(os.path.abspath(path)), ".lock", prefix=".")


@contextmanager
def output_lock(path: str | Path, what: str = "output") -> Iterator[Path]:
    """Hold the exclusive lock of output ``path`` (``what`` names it in the refusal) for the block.

    Creates the output's parent folder if needed. Raises :class:`InputError` when another process
    holds it.
    """
    lock = lock_path(path)
    key = str(lock)
    with _GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            fd = _acquire(lock, Path(path), what)
            if fd is not None:
                _HELD[key] = [fd, 1]
    try:
        yield lock
    finally:
        with _GUARD:
            entry = _HELD.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    del _HELD[key]
                    _release(lock, entry[0])


def _acquire(lock: Path, path: Path, what: str) -> int | None:
    """Open and lock ``lock``; the fd, or None where locking is not possible here."""
    if fcntl is None:
        return None
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise InputError(
                f"another spkemb process ({holder}) is writing this {what}; wait for it to "
                "finish, or stop it and run again",
                path,
            ) from None
        except OSError as err:
            os.close(fd)
            if err.errno in _UNSUPPORTED:
                return None
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            except OSError:  # a full disk: the lock holds without its note of who holds it
                pass
            return fd
        os.close(fd)  # the holder removed the file between our open and our lock: try the new one
    raise InputError(f"cannot take the lock of this {what} (its lock file keeps changing)", path)


def _holder(fd: int) -> str:
    """Who holds the lock, as the lock file says (it may not have written itself in yet)."""
    for _ in range(20):
        try:
            record = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            pid, host = int(record["pid"]), str(record.get("host", ""))
        except (ValueError, KeyError, TypeError, OSError):
            time.sleep(0.01)
            continue
        return f"pid {pid}" + ("" if host in ("", socket.gethostname()) else f" on {host}")
    return "pid unknown"


def _release(lock: Path, fd: int) -> None:
    # Remove the file while still holding the lock, so that nobody locks a file about to vanish.
    try:
        lock.unlink()
    except OSError:
        pass
    os.close(fd)
