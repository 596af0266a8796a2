"""Speaker encoders and their registry.

Importing this package registers the built-in encoders: ``ecapa``, ``resnet34``, ``tdnn``,
``mfcc-stats`` and ``wavlm-mhfa``. Build one with ``build_encoder(name, **kwargs)``; save and load with
``save_encoder`` / ``load_encoder``.
"""

from spkemb.models import ecapa, mfcc_stats, resnet, tdnn, wavlm_mhfa  # noqa: F401  (registers the encoders)
from spkemb.models.io import describe_encoder, file_sha256, load_encoder, save_encoder
from spkemb.models.registry import build_encoder, list_encoders, register_encoder

__all__ = [
    "build_encoder",
    "list_encoders",
    "register_encoder",
    "save_encoder",
    "load_encoder",
    "file_sha256",
    "describe_encoder",
]
