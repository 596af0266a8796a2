"""WeSpeaker's ResNet (ResNet34 by default) with its exact front-end, for imported WeSpeaker models.

The network of WeSpeaker's ``ResNet34`` (``m_channels`` 32, basic blocks [3, 4, 6, 3], stride 2 in
frequency and time from the second stage, temporal statistics pooling with the unbiased variance
plus 1e-7, one linear embedding layer, optionally a second after ReLU and a non-affine BatchNorm)
with the module names of WeSpeaker's checkpoints, so an ``avg_model.pt`` loads by name. Its
front-end is WeSpeaker's: Kaldi fbank (80 bins, 25/10 ms, hamming window, samples scaled by 2^15,
no dither) with per-utterance mean subtraction (:class:`spkemb.models.kaldi_fbank.KaldiFbank`).
Each utterance of a padded batch runs on its own frames only (utterances of equal frame count
together), so a padded batch gives what each utterance gives alone. Trainable like any encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spkemb.models.kaldi_fbank import KaldiFbank, by_length
from spkemb.models.registry import register_encoder
from spkemb.models.resnet import _BasicBlock  # the same block and key names as WeSpeaker's BasicBlock
from spkemb.options import Options, opt

__all__ = ["WeSpeakerResNet"]


@dataclass
class WeSpeakerResNetOptions(Options):
    """WeSpeaker ResNet's options (its ``model_args`` plus the front-end)."""

    sample_rate: int = opt(16000, "input sample rate (Hz)")
    n_mels: int = opt(80, "Kaldi fbank bins (WeSpeaker's feat_dim)")
    embed_dim: int = opt(256, "embedding size")
    m_channels: int = opt(32, "channels of the first stage (doubled at each stage)")
    layers: tuple[int, ...] = opt((3, 4, 6, 3), "basic blocks per stage (3, 4, 6, 3 = ResNet34)")
    two_emb_layer: bool = opt(False, "a second embedding layer after ReLU and BatchNorm (WeSpeaker's two_emb_layer)")
    window: str = opt("hamming", "Kaldi fbank window")
    scale: float = opt(32768.0, "samples are multiplied by this before the fbank (WeSpeaker: 2^15)")

    def __post_init__(self) -> None:
        if len(self.layers) != 4:
            raise ValueError(f"layers needs 4 stages, got {len(self.layers)}")


@register_encoder("wespeaker-resnet")
class WeSpeakerResNet(nn.Module):
    """WeSpeaker ResNet (ResNet34 by default, 256-d) on WeSpeaker's Kaldi fbank front-end."""

    Options = WeSpeakerResNetOptions

    def __init__(self, options: WeSpeakerResNetOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        o = self.options = options.replace(**kwargs) if options else WeSpeakerResNetOptions(**kwargs)
        self.config = {"name": "wespeaker-resnet", **o.to_dict()}
        self.sample_rate = int(o.sample_rate)
        self.embed_dim = int(o.embed_dim)
        self.frontend = KaldiFbank(o.sample_rate, o.n_mels, window=o.window, scale=o.scale)
        m = int(o.m_channels)
        self.conv1 = nn.Conv2d(1, m, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        cin = m
        for stage, n in enumerate(o.layers):
            cout = m * 2**stage
            blocks = []
            for i in range(int(n)):
                blocks.append(_BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.stats_dim = int(o.n_mels / 8) * m * 8
        self.seg_1 = nn.Linear(2 * self.stats_dim, self.embed_dim)
        self.two_emb_layer = bool(o.two_emb_layer)
        if self.two_emb_layer:
            self.seg_bn_1: nn.Module = nn.BatchNorm1d(self.embed_dim, affine=False)
            self.seg_2: nn.Module = nn.Linear(self.embed_dim, self.embed_dim)

    def embed_feats(self, feats: Tensor) -> Tensor:
        """(B, D) embeddings of (B, T, n_mels) features of equal length (WeSpeaker's model forward)."""
        x = feats.transpose(1, 2).unsqueeze(1)
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in range(1, 5):
            for block in getattr(self, f"layer{stage}"):
                x, _ = block(x, None)  # equal lengths: no mask
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        stats = torch.cat([x.mean(dim=-1), torch.sqrt(torch.var(x, dim=-1) + 1e-7)], dim=1)
        emb = self.seg_1(stats)
        if self.two_emb_layer:
            emb = self.seg_2(self.seg_bn_1(F.relu(emb)))
        return emb

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        return by_length(self.embed_feats, self.frontend(wav, lengths))
