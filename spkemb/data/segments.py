"""Cut recordings into fixed-length segments (the manifest's ``start``/``end`` columns).

A PLDA training set, a score-normalisation cohort and a calibration trial list want several items
per speaker, drawn from speakers of their own; a corpus of one long recording per speaker (the
LibriSpeech train-clean-100 sample: one ~12-s file each) has one. ``spkemb prepare --segment 3``
cuts every recording into 3-s pieces (the last one kept if at least ``min_seconds`` long), so that
``score --backend plda --train`` and ``prepare --trials`` work on it. With ``max_seconds`` the
piece lengths are drawn uniformly from ``[min_seconds, max_seconds]`` (seeded), so a development
list spans durations as test lists do. A piece's utt_id is ``UTT@START-END`` (seconds from the
start of the recording's own item, at most 3 decimals); no audio is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from spkemb.data.manifest import Utterance

__all__ = ["segment_utterances"]


def _seconds(x: float) -> str:
    return f"{round(x, 3):g}"


def segment_utterances(
    utts: Sequence[Utterance],
    seconds: float,
    min_seconds: float | None = None,
    max_seconds: float | None = None,
    seed: int = 0,
) -> list[Utterance]:
    """Every utterance cut into pieces of ``seconds`` (or of lengths drawn from ``[min_seconds,
    max_seconds]``), each piece a segment of the same file; a piece (and an utterance) shorter than
    ``min_seconds`` (default: 2/3 of ``seconds``) is left out."""
    low = seconds * 2.0 / 3.0 if min_seconds is None else min_seconds
    rng = np.random.default_rng(seed)
    out = []
    for u in utts:
        origin = u.start or 0.0
        t = 0.0
        while u.duration - t >= low - 1e-9:
            length = seconds if max_seconds is None else float(rng.uniform(low, max_seconds))
            end = min(t + length, u.duration)
            out.append(
                replace(
                    u,
                    utt_id=f"{u.utt_id}@{_seconds(t)}-{_seconds(end)}",
                    duration=end - t,
                    start=origin + t,
                    end=origin + end,
                )
            )
            t = end
    return out
