"""Encoders of other toolkits, read from their local checkpoint files into ordinary spkemb encoders.

Each format is one module here with ``import_model(src: Path) -> nn.Module``: it reads the peer's
checkpoint (``torch.load(weights_only=True)``, never unpickled otherwise), builds the spkemb encoder
that computes what the peer's model computes (front-end included) and loads the weights into it.
The encoder's ``config`` rebuilds it as for any encoder; where it came from (format, source path,
the source files' SHA-256, the peer's own settings) goes in ``model.extra["imported"]``, which
``spkemb import-model`` saves as the encoder file's ``extra`` (``save_encoder(model, out, extra=model.extra)``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from spkemb.errors import InputError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["FORMATS", "import_model"]

# format name -> module under spkemb.imports that holds its import_model(src)
FORMATS: dict[str, str] = {
    "wespeaker": "spkemb.imports.wespeaker",
    "speechbrain": "spkemb.imports.speechbrain",
    "3dspeaker": "spkemb.imports.threedspeaker",
}


def import_model(fmt: str, src: str | Path) -> nn.Module:
    """The encoder in the peer checkpoint ``src`` (a folder or file) of format ``fmt`` (a key of :data:`FORMATS`)."""
    key = str(fmt).strip().lower()
    if key not in FORMATS:
        raise InputError(f"unknown model format {fmt!r} (choose {', '.join(FORMATS)})")
    path = Path(src)
    if not path.exists():
        raise InputError("no such file or folder", path)
    try:
        module = importlib.import_module(FORMATS[key])
    except ModuleNotFoundError as err:  # a format whose importer is not in this build
        raise InputError(f"model format {key!r} is not supported by this spkemb ({err.name})") from None
    return module.import_model(path)
