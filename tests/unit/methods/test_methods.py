"""Self-supervised methods: the loss falls on synthetic speakers, EMA/queue/centre bookkeeping,
no gradient into frozen copies, bf16, the registry, and DDP gathering (gloo, two processes)."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from spkemb.audio import audio_info
from spkemb.data.crops import CropDataset, collate_crops
from spkemb.data.manifest import Utterance
from spkemb.data.synthetic import make_corpus
from spkemb.errors import InputError
from spkemb.methods import Method, build_method, list_methods, method_views
from spkemb.methods.dino import cosine_momentum
from spkemb.methods.moco import split_forward
from spkemb.models import build_encoder

SR = 16000
TINY = dict(channels=32, embed_dim=32, n_mels=40, mfa_channels=96, attention_channels=16, se_channels=16)

# Settings under which the loss reliably falls in a few dozen steps (checked over several seeds).
SETTINGS: dict[str, tuple[dict[str, Any], int, int]] = {  # options, steps, first step compared
    # A queue the size of two batches is all real keys from step 2 on (before that it holds
    # MoCo's random start, easier negatives, so the first two losses are not comparable).
    "moco": (dict(queue_size=16, momentum=0.99, crop_seconds=0.5), 40, 2),
    "simclr": (dict(crop_seconds=0.5), 30, 0),
    "cel": (dict(crop_seconds=0.5), 30, 0),
    "dino": (
        dict(
            out_dim=256, hidden=64, bottleneck=32, momentum=0.99, global_seconds=1.0, local_crops=2, local_seconds=0.5
        ),
        30,
        0,
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def utts(tmp_path_factory: pytest.TempPathFactory) -> list[Utterance]:
    root = tmp_path_factory.mktemp("ssl_corpus")
    files = make_corpus(root, n_speakers=4, utts_per_speaker=3, seconds=(1.0, 2.0), sample_rate=SR, seed=0)
    out = []
    for f in files:
        rel = f.relative_to(root)
        out.append(Utterance(str(rel), str(f), rel.parts[0], audio_info(f).duration, SR))
    return out


def tiny_encoder() -> nn.Module:
    return build_encoder("ecapa", **TINY)


def make(name: str, seed: int = 0, **options: Any) -> Method:
    torch.manual_seed(seed)
    return build_method(name, tiny_encoder(), **options)


def batches(utts: list[Utterance], name: str, options: dict[str, Any], steps: int, batch: int = 8, seed: int = 0):
    """A new epoch (new crops) every step; ``batch`` distinct utterances per batch."""
    ds = CropDataset(utts, SR, method_views(name, **options), seed=seed)
    for step in range(steps):
        ds.set_epoch(step)
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1000 * seed + step))[:batch]
        yield collate_crops([ds[int(i)] for i in idx])


def trainable(m: nn.Module) -> list[nn.Parameter]:
    return [p for p in m.parameters() if p.requires_grad]


@pytest.mark.parametrize("name", ["moco", "simclr", "cel", "dino"])
def test_loss_falls(utts: list[Utterance], name: str) -> None:
    options, steps, first = SETTINGS[name]
    method = make(name, **options)
    method.train()
    opt = torch.optim.Adam(trainable(method), lr=1e-3)
    losses = []
    for step, b in enumerate(batches(utts, name, options, steps), start=1):
        loss, logs = method(b)
        assert isinstance(logs, dict) and all(isinstance(v, float) for v in logs.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(step, steps)
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    start, end = np.mean(losses[first : first + 5]), np.mean(losses[-5:])
    assert end < start - 0.1 * abs(start), f"{name}: loss {start:.3f} -> {end:.3f}"


def _one_step(method: Method, batch: dict[str, Any], lr: float = 1e-2) -> None:
    opt = torch.optim.SGD(trainable(method), lr=lr)
    loss, _ = method(batch)
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize(("name", "frozen"), [("moco", ("key_encoder", "key_head")),
                                              ("dino", ("teacher_encoder", "teacher_head"))])  # fmt: skip
def test_no_gradient_reaches_ema_copies(utts: list[Utterance], name: str, frozen: tuple[str, ...]) -> None:
    options = SETTINGS[name][0]
    method = make(name, **options)
    b = next(batches(utts, name, options, 1, batch=4))
    loss, _ = method(b)
    loss.backward()
    for attr in frozen:
        for p in getattr(method, attr).parameters():
            assert not p.requires_grad and p.grad is None
    assert any(p.grad is not None for p in method.encoder.parameters())
    frozen_ids = {id(p) for attr in frozen for p in getattr(method, attr).parameters()}
    assert not frozen_ids & {id(p) for p in trainable(method)}


def test_moco_key_encoder_is_the_ema(utts: list[Utterance]) -> None:
    m = 0.9
    method = make("moco", queue_size=16, momentum=m, crop_seconds=0.5)
    assert all(torch.equal(k, q) for k, q in zip(method.key_encoder.parameters(), method.encoder.parameters(),
                                                  strict=True))  # fmt: skip
    _one_step(method, next(batches(utts, "moco", {"crop_seconds": 0.5}, 1, batch=4)))
    pairs = [(method.key_encoder, method.encoder), (method.key_head, method.head)]
    before = [[k.detach().clone() for k in key.parameters()] for key, _ in pairs]
    method.after_step(1, 10)
    changed = 0
    for (key, query), old in zip(pairs, before, strict=True):
        for k, q, k0 in zip(key.parameters(), query.parameters(), old, strict=True):
            torch.testing.assert_close(k, m * k0 + (1 - m) * q.detach(), rtol=0, atol=1e-6)
            changed += int(not torch.equal(k, k0))
    assert changed > 0


def test_moco_queue_fills_wraps_and_skips_own_utterances(utts: list[Utterance]) -> None:
    method = make("moco", queue_size=10, proj_dim=16, crop_seconds=0.5)
    method.train()
    size = 10
    assert method.queue.shape == (size, 16)
    seen: list[int] = []
    fills = []
    for b in batches(utts, "moco", {"crop_seconds": 0.5}, 3, batch=4):
        queued_before = method.queue.clone()
        _, logs = method(b)
        fills.append(logs["queue_fill"])
        seen += b["index"].tolist()
        # The batch's own keys went in after the loss: they are the newest entries.
        n = len(seen)
        pos = [(n - 4 + j) % size for j in range(4)]
        assert method.queue_index[pos].tolist() == b["index"].tolist()
        assert not torch.equal(method.queue[pos], queued_before[pos])
    assert fills == [0.4, 0.8, 1.0]
    assert int(method.queue_ptr) == 12 % size  # wrapped around
    expected = [seen[10], seen[11]] + seen[2:10]  # slots 0, 1 overwritten by the third batch
    assert method.queue_index.tolist() == expected
    torch.testing.assert_close(method.queue.norm(dim=1), torch.ones(size))
    # A queued key of an utterance in the current batch is never one of its negatives.
    batch_index = torch.tensor([seen[-1], 999])
    neg = method.negatives(batch_index)
    own = (method.queue_index == seen[-1]).sum().item()
    assert own >= 1 and neg.shape[0] == size - own
    assert method.negatives(torch.tensor([998, 999])) is method.queue
    # Evaluation-mode forwards leave the queue alone.
    method.eval()
    snapshot = method.queue_index.clone()
    method(b)
    assert torch.equal(method.queue_index, snapshot)


def test_split_forward_shuffles_batchnorm_groups() -> None:
    torch.manual_seed(0)
    x = torch.randn(12, 5)
    lin = nn.Linear(5, 3)
    perm = torch.randperm(12)
    torch.testing.assert_close(split_forward(lin, x, 3, perm), lin(x))  # order restored
    bn = nn.BatchNorm1d(5)
    whole, split = bn(x), split_forward(bn, x, 3, perm)
    assert not torch.allclose(whole, split)  # statistics come from the shuffled sub-batches
    for g in perm.tensor_split(3):
        torch.testing.assert_close(split[g], nn.functional.batch_norm(x[g], None, None, training=True))
    method = make("moco", bn_splits=4, bn_min_group=8)
    assert [method.groups_for(b) for b in (8, 15, 16, 24, 256)] == [1, 1, 2, 3, 4]


def test_dino_momentum_schedule_and_centre(utts: list[Utterance]) -> None:
    options = dict(SETTINGS["dino"][0], momentum=0.9, warmup_teacher_temp=0.02, warmup_teacher_temp_steps=4)
    method = make("dino", **options)
    method.train()
    total = 6
    assert cosine_momentum(0.996, 0, total) == pytest.approx(0.996)
    assert cosine_momentum(0.996, total, total) == pytest.approx(1.0)
    assert cosine_momentum(0.996, total // 2, total) == pytest.approx(0.998)
    assert cosine_momentum(0.996, 5, None, progress=0.5) == pytest.approx(0.998)
    temps, moms = [], []
    for step, b in enumerate(batches(utts, "dino", options, total, batch=4), start=1):
        centre = method.loss_fn.center.clone()
        _one_step(method, b)
        assert not torch.equal(method.loss_fn.center, centre)  # the centre moved
        teacher = [p.clone() for p in method.teacher_encoder.parameters()]
        method.after_step(step, total)
        m = 1 - (1 - 0.9) * (1 + math.cos(math.pi * step / total)) / 2
        assert method.teacher_momentum == pytest.approx(m)
        for t, s, t0 in zip(method.teacher_encoder.parameters(), method.encoder.parameters(), teacher, strict=True):
            torch.testing.assert_close(t, m * t0 + (1 - m) * s.detach(), rtol=0, atol=1e-6)
        temps.append(method.teacher_temp_at(step - 1))
        moms.append(method.teacher_momentum)
    assert temps == pytest.approx([0.02, 0.025, 0.03, 0.035, 0.04, 0.04])
    assert moms == sorted(moms) and moms[-1] == pytest.approx(1.0)
    # At momentum 1 the teacher no longer moves; the logs report the schedule.
    _, logs = method(next(batches(utts, "dino", options, 1, batch=4)))
    assert logs["teacher_momentum"] == pytest.approx(1.0) and logs["teacher_temp"] == pytest.approx(0.04)
    assert 0 <= logs["teacher_entropy"] <= math.log(256) + 1e-6
    method.eval()
    centre = method.loss_fn.center.clone()
    method(next(batches(utts, "dino", options, 1, batch=4)))
    assert torch.equal(method.loss_fn.center, centre)  # only training forwards move it


@pytest.mark.parametrize(
    ("name", "extra"),
    [("moco", {}), ("moco", {"symmetric": True, "bn_min_group": 2}), ("simclr", {}), ("cel", {"n_crops": 3}),
     ("dino", {})],
)  # fmt: skip
def test_bf16_autocast(utts: list[Utterance], name: str, extra: dict[str, Any]) -> None:
    options = {**SETTINGS[name][0], **extra}
    method = make(name, **options)
    b = next(batches(utts, name, options, 1, batch=4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = method(b)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in trainable(method) if p.grad is not None)


def test_registry() -> None:
    assert list_methods("pretrain") == ["cel", "dino", "moco", "simclr"]
    assert method_views("moco") == [(2, 2.0)]
    assert method_views("simclr", crop_seconds=1.5, temperature=0.2) == [(2, 1.5)]
    assert method_views("cel", n_crops=3) == [(3, 2.0)]
    assert method_views("dino") == [(2, 3.0), (4, 1.5)]
    assert method_views("dino", local_crops=0) == [(2, 3.0)]
    enc = tiny_encoder()
    m = build_method("MoCo", enc, queue_size=8)
    assert isinstance(m, Method) and m.encoder is enc and m.crops_per_item == 2
    assert build_method("dino", tiny_encoder(), out_dim=64, hidden=32, bottleneck=16).crops_per_item == 6
    with pytest.raises(InputError, match="unknown method"):
        build_method("byol", enc)
    with pytest.raises(InputError, match="no option"):
        build_method("moco", enc, queue=8)
    with pytest.raises(InputError, match="no option"):
        method_views("cel", global_crops=2)
    with pytest.raises(InputError, match="n_crops"):
        build_method("cel", enc, n_crops=1)


# -- DDP: two gloo processes on the CPU -----------------------------------------------------------


class _Lin(nn.Module):
    """A stand-in encoder without BatchNorm: waveform (B, S) -> (B, 4)."""

    def __init__(self, samples: int) -> None:
        super().__init__()
        self.embed_dim = 4
        self.sample_rate = SR
        self.lin = nn.Linear(samples, 4)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.lin(wav)


def _ddp_worker(rank: int, world: int, port: int, data: dict[str, torch.Tensor], out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        rows = slice(0, 3) if rank == 0 else slice(3, 5)  # uneven: 3 and 2 rows
        batch = {"views": [data["views"][rows]], "index": data["index"][rows]}
        torch.manual_seed(0)
        moco = build_method("moco", _Lin(data["views"].shape[-1]), queue_size=8, proj_dim=None, bn_splits=1)
        moco(batch)
        torch.manual_seed(0)
        simclr = build_method("simclr", _Lin(data["views"].shape[-1]), proj_dim=None)
        loss, _ = simclr(batch)
        loss.backward()
        grad = simclr.encoder.lin.weight.grad.clone()
        dist.all_reduce(grad)  # what DDP's averaging gives, times the world size
        torch.save({"queue": moco.queue, "index": moco.queue_index, "fill": moco.queue_fill,
                    "loss": loss.detach(), "grad": grad / world}, Path(out) / f"rank{rank}.pt")  # fmt: skip
    finally:
        from spkemb.utils.distributed import cleanup

        cleanup()  # (waits for both ranks: a rank leaving mid-collective made gloo abort the other)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gathers_keys_and_negatives(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = {"views": torch.randn(5, 2, 64), "index": torch.arange(10, 15)}
    mp.spawn(_ddp_worker, args=(2, _free_port(), data, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # Every rank enqueued all 5 keys, in rank order: identical queues.
    assert torch.equal(r0["queue"], r1["queue"]) and int(r0["fill"]) == 5
    assert r0["index"][:5].tolist() == [10, 11, 12, 13, 14]
    # SimCLR: both ranks computed the loss over the global batch of 5, and the averaged gradient
    # is the gradient of that global loss in one process.
    torch.manual_seed(0)
    simclr = build_method("simclr", _Lin(64), proj_dim=None)
    loss, _ = simclr({"views": [data["views"]], "index": data["index"]})
    loss.backward()
    torch.testing.assert_close(r0["loss"], loss.detach())
    torch.testing.assert_close(r1["loss"], loss.detach())
    torch.testing.assert_close(r0["grad"], simclr.encoder.lin.weight.grad, rtol=1e-4, atol=1e-6)


def test_dino_holds_its_prototypes_for_the_first_steps(utts: list[Utterance]) -> None:
    options = {**SETTINGS["dino"][0], "freeze_last_layer_steps": 2}
    method = make("dino", **options)
    method.train()
    opt = torch.optim.AdamW(trainable(method), lr=1e-2, weight_decay=0.1)
    last = [p.detach().clone() for p in method.head.last_layer.parameters()]
    first_mlp = next(method.head.mlp.parameters()).detach().clone()
    for step, b in enumerate(batches(utts, "dino", options, 3), start=0):
        loss, _ = method(b)
        opt.zero_grad()
        loss.backward()
        method.before_optimizer_step(step)
        opt.step()
        method.after_step(step + 1, 3)
        moved = [not torch.equal(p, q) for p, q in zip(method.head.last_layer.parameters(), last, strict=True)]
        assert any(moved) == (step + 1 > 2), f"after step {step + 1}: last layer moved={moved}"
    assert not torch.equal(next(method.head.mlp.parameters()), first_mlp)  # the rest of the head trains
    assert method.config["freeze_last_layer_steps"] == 2
