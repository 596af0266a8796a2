"""spkemb: speaker embeddings from audio folders to scored trials."""

__version__ = "0.1.0"
