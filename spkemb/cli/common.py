"""Kept for imports written before the split (issue 17): the names now live in rooms of their own.

``console``, ``busy_notice``, ``print_json``: :mod:`spkemb.cli.console`; ``fail``, ``guarded``,
``not_yet``: :mod:`spkemb.cli.errors`; ``progress``, ``LogProgress``, ``progress_line``,
``log_interval``: :mod:`spkemb.cli.progress`; ``Precision`` and the completions:
:mod:`spkemb.cli.params`; ``run_training``, ``resume_command``: :mod:`spkemb.cli.training`.
Import from those; this module goes once nothing imports it.
"""

from __future__ import annotations

from spkemb.cli.console import busy_notice, console, print_json
from spkemb.cli.errors import fail, guarded, not_yet
from spkemb.cli.params import Precision, complete_device, complete_encoders, complete_methods, method_metavar
from spkemb.cli.progress import DEFAULT_LOG_INTERVAL, LogProgress, log_interval, progress, progress_line
from spkemb.cli.training import resume_command, run_training

__all__ = [
    "DEFAULT_LOG_INTERVAL",
    "LogProgress",
    "Precision",
    "busy_notice",
    "complete_device",
    "complete_encoders",
    "complete_methods",
    "console",
    "fail",
    "guarded",
    "log_interval",
    "method_metavar",
    "not_yet",
    "print_json",
    "progress",
    "progress_line",
    "resume_command",
    "run_training",
]
