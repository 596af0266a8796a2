"""One call each for what a SpeechBrain user does with ``EncoderClassifier`` and ``SpeakerRecognition``::

    import spkemb

    encoder = spkemb.load_encoder("exp/ft")          # an experiment folder, an encoder.pt, or "mfcc-stats"
    vector = spkemb.embed(encoder, "a.wav")          # (D,) float32, as `spkemb extract` writes it
    vector = spkemb.embed(encoder, wave, 16000)      # a waveform (1-D array or tensor) at its rate
    score = spkemb.verify(encoder, "a.wav", "b.wav") # cosine similarity, as `spkemb score` computes it

:func:`embed` decodes, resamples and windows as ``spkemb extract`` does with its defaults (an
encoder with ``max_seconds``, WavLM's, embeds long audio in windows of that length and averages
them; audio shorter than half a second is repeated to that length), so a vector from here and the
store's row for the same file are the same vector. For many files use ``spkemb extract`` (batched,
resumable) and :func:`spkemb.embeddings.store.read_embeddings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spkemb.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["load_encoder", "embed", "verify"]


def load_encoder(spec: str | Path, device: str = "cpu") -> nn.Module:
    """The encoder of an experiment folder, an ``encoder.pt`` or a built-in baseline's name
    (``mfcc-stats``), in eval mode on ``device``; see :func:`spkemb.models.io.load_encoder`."""
    from spkemb.models.io import load_encoder as load

    return load(spec, map_location=device)


def _wave(audio: str | Path | np.ndarray | torch.Tensor, rate: int, sample_rate: int | None) -> np.ndarray:
    from spkemb.audio import load_audio, resample

    if isinstance(audio, str | Path):
        return load_audio(audio, rate)
    x = audio.detach().cpu().numpy() if hasattr(audio, "detach") else np.asarray(audio)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise InputError(f"a waveform must be a non-empty 1-D array of samples, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError("the waveform holds NaN or infinite samples")
    return resample(x, sample_rate, rate) if sample_rate and sample_rate != rate else x


def embed(
    encoder: nn.Module, audio: str | Path | np.ndarray | torch.Tensor, sample_rate: int | None = None
) -> np.ndarray:
    """The embedding of one file or waveform: ``(D,)`` float32 (not normalised, like a store's rows).

    ``sample_rate`` is the waveform's (default: the encoder's); a file is decoded at the encoder's
    rate. A file that cannot be read, or a waveform that is not 1-D, raises :class:`InputError`.
    """
    import torch

    from spkemb.data.utterances import Loaded, UtteranceDataset, collate
    from spkemb.embeddings.extract import embed_batch

    rate = int(getattr(encoder, "sample_rate", 16000))
    pieces = UtteranceDataset([], [], rate, chunk=getattr(encoder, "max_seconds", None)).pieces(
        _wave(audio, rate, sample_rate)
    )
    batch = collate([Loaded(0, pieces)])
    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            return embed_batch(encoder, batch.wav, batch.lengths, batch.owner, 1, device)[0]
    finally:
        encoder.train(was_training)


def verify(
    encoder: nn.Module,
    a: str | Path | np.ndarray | torch.Tensor,
    b: str | Path | np.ndarray | torch.Tensor,
    sample_rate: int | None = None,
) -> float:
    """The cosine score of ``a`` against ``b`` (files or waveforms at ``sample_rate``): higher means
    more likely the same speaker. The score is that of ``spkemb score``'s cosine back-end; a decision
    threshold comes from scoring a labelled trial list (its EER threshold, or a calibration)."""
    from spkemb.scoring.backends import cosine_scores

    vectors = np.stack([embed(encoder, a, sample_rate), embed(encoder, b, sample_rate)])
    return float(cosine_scores(vectors, np.array([0]), np.array([1]))[0])
