"""Where an encoder's weights live and what identifies them, without torch.

``spkemb.models.io`` (which loads the weights) and ``spkemb.embeddings.plan`` (which decides, before
torch is imported, whether an extraction has anything to do) share these rules.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from spkemb.errors import InputError

__all__ = ["ENCODER_FILE", "encoder_path", "file_sha256", "encoder_checksum"]

ENCODER_FILE = "encoder.pt"


def encoder_path(spec: str | Path) -> Path | None:
    """The encoder file that ``spec`` names (an experiment folder names its ``encoder.pt``), or
    ``None`` when it names no file or folder (a built-in encoder's name)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        f = p / ENCODER_FILE
        if not f.is_file():
            raise InputError(f"no {ENCODER_FILE} in this folder (not an experiment folder?)", p)
        return f
    if p.exists():
        return p
    return None


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the encoder checksum recorded next to embeddings)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as err:
        raise InputError(f"cannot read file ({err.strerror or type(err).__name__})", path) from None
    return h.hexdigest()


def encoder_checksum(spec: str | Path) -> str:
    """What identifies the weights behind ``spec``: the SHA-256 of its encoder file, or
    ``builtin:NAME`` for a parameter-free baseline (recorded in stores; shards must agree on it)."""
    path = encoder_path(spec)
    if path is None:
        return "builtin:" + str(spec).strip().lower().replace("_", "-")
    return file_sha256(path)
