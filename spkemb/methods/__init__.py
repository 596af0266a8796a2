"""Training methods: each owns its networks and turns a batch into a loss (see ``base.py``).

Self-supervised pretraining: ``moco``, ``simclr``, ``cel``, ``dino``, built by name with
:func:`build_method`; :func:`method_views` says which crops each one needs.
"""

from spkemb.methods.base import Method
from spkemb.methods.registry import build_method, list_methods, method_class, method_options, method_views

__all__ = ["Method", "build_method", "list_methods", "method_class", "method_options", "method_views"]
