"""SpeechBrain's side of ``bench_train.py --vs-speechbrain``: one training step, timed on request.

Runs in SpeechBrain's own venv (never imports spkemb). ``python peer_train_step.py TASK PRECISION
DATA`` builds the model of SpeechBrain's VoxCeleb ECAPA recipe (``Fbank(n_mels=80)`` ->
``InputNormalization(norm_type="sentence", std_norm=False)`` -> ``ECAPA_TDNN``) at C=512 and then
reads commands from stdin, one per line: ``N`` runs N steps and prints their seconds as one JSON
list; ``quit`` ends. The step, as the recipe's ``Brain.fit_batch`` does it (without gradient
clipping, which spkemb's default does not do either): features, forward (under
``torch.autocast(cpu, bf16)`` for bf16, as ``Brain`` wraps ``compute_forward``), loss, backward,
``AdamW`` step, ``zero_grad``.

TASK ``aam``: ``Classifier`` + ``LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30))``
on the (B,) labels. TASK ``cel``: SpeechBrain has no CEL, so the loss of contrastive equilibrium
learning (uniformity, t=2, over all crop embeddings + angular prototypical with learnable scale 10
and bias -5; Mun et al. 2020) is written here from the paper; the (B, 2, S) crops go through the
encoder as one batch of 2B, as spkemb's CEL does.

``--tune-allocator`` first applies the glibc setting that spkemb's CLI applies on the CPU (mmap
threshold raised to the largest int, heap trimming off; a libc setting, not spkemb code), so the
comparison can hold the allocator fixed too.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper
from speechbrain.processing.features import InputNormalization


def tune_allocator() -> bool:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(-3, 2**31 - 1) == 1  # M_MMAP_THRESHOLD
    return bool(libc.mallopt(-1, -1) == 1 and ok)  # M_TRIM_THRESHOLD: never trim


class CELLoss(torch.nn.Module):
    """Uniformity (Wang & Isola 2020) + angular prototypical (Chung et al. 2020), from the papers."""

    def __init__(self, t: float = 2.0, init_w: float = 10.0, init_b: float = -5.0) -> None:
        super().__init__()
        self.t = t
        self.w = torch.nn.Parameter(torch.tensor(init_w))
        self.b = torch.nn.Parameter(torch.tensor(init_b))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (N, M, D)
        z = z.float()
        n, m, _ = z.shape
        u = F.normalize(z.reshape(n * m, -1), dim=1)
        d2 = (2 - 2 * u @ u.t()).clamp_min(0)
        iu = torch.triu_indices(n * m, n * m, offset=1)
        pairs = d2[iu[0], iu[1]]
        uniformity = torch.logsumexp(-self.t * pairs, dim=0) - math.log(pairs.numel())
        q = F.normalize(z[:, 0], dim=1)
        p = F.normalize(z[:, 1:].mean(dim=1), dim=1)
        logits = (q @ p.t()) * self.w.clamp_min(1e-6) + self.b
        return uniformity + F.cross_entropy(logits, torch.arange(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=["aam", "cel"])
    ap.add_argument("precision", choices=["fp32", "bf16"])
    ap.add_argument("data", help="torch.save'd dict: wav (B, S) or (B, M, S), labels (B,), n_classes")
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tune-allocator", action="store_true")
    a = ap.parse_args()
    if a.tune_allocator and not tune_allocator():
        sys.exit("peer: mallopt failed")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    data = torch.load(a.data, weights_only=True)
    wav, labels = data["wav"], data["labels"]
    c = a.channels
    fbank = Fbank(n_mels=80)
    norm = InputNormalization(norm_type="sentence", std_norm=False)
    encoder = ECAPA_TDNN(
        input_size=80,
        channels=[c, c, c, c, 3 * c],
        kernel_sizes=[5, 3, 3, 3, 1],
        dilations=[1, 2, 3, 4, 1],
        attention_channels=128,
        lin_neurons=192,
    )
    if a.task == "aam":
        head: torch.nn.Module = Classifier(input_size=192, out_neurons=int(data["n_classes"]))
        aam = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30))
    else:
        head = CELLoss()
    modules = torch.nn.ModuleList([fbank, norm, encoder, head]).train()
    opt = torch.optim.AdamW(modules.parameters(), lr=1e-3)
    amp = a.precision == "bf16"

    def step() -> float:
        t0 = time.perf_counter()
        x = wav if wav.dim() == 2 else wav.transpose(0, 1).reshape(-1, wav.shape[-1])  # crop-major
        lens = torch.ones(x.shape[0])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            feats = norm(fbank(x), lens)
            emb = encoder(feats, lens)  # (B, 1, 192)
            if a.task == "aam":
                loss = aam(head(emb), labels[:, None], lens)
            else:
                n = wav.shape[0]
                loss = head(emb.reshape(wav.shape[1], n, -1).transpose(0, 1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            sys.exit("peer: loss not finite")
        return time.perf_counter() - t0

    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        print(json.dumps([step() for _ in range(int(cmd))]), flush=True)


if __name__ == "__main__":
    main()
