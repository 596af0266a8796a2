"""Locate the real-speech corpora: $SPKEMB_CORPORA, else ../shared/corpora beside the repository."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def corpora_root() -> Path:
    env = os.environ.get("SPKEMB_CORPORA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "corpora"
    if not (root / "librispeech-samples").is_dir():
        print(
            f"skipped: no corpora at {root} (set SPKEMB_CORPORA to the folder holding librispeech-samples/)",
            file=sys.stderr,
        )
        sys.exit(0)
    return root
