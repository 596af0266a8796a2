"""Training methods: each owns its networks and turns a batch into a loss (see ``base.py``).

Self-supervised pretraining: ``moco``, ``simclr``, ``cel``, ``dino``; each is one module here,
registered with :func:`register_method` and built by name with :func:`build_method`;
:func:`method_views` says which crops each one needs.
"""

from spkemb.methods.base import Method
from spkemb.methods.registry import (
    build_method,
    list_methods,
    method_class,
    method_names,
    method_options,
    method_views,
    register_method,
)

__all__ = [
    "Method",
    "build_method",
    "list_methods",
    "method_class",
    "method_names",
    "method_options",
    "method_views",
    "register_method",
]
