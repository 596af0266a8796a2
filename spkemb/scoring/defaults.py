"""Defaults of the scoring options, in a module without imports so the CLI renders them in ``--help``
without loading numpy."""

from __future__ import annotations

DEFAULT_TOP_K = 300  # asnorm: best cohort scores kept per embedding when top_k is not given
DEFAULT_P_TARGETS: tuple[float, ...] = (0.01, 0.05)  # DCF operating points of the report
