"""Toy method and data for the trainer tests, and the script that ``torchrun`` runs for the DDP test.

    torchrun --standalone --nproc_per_node 2 tests/helpers/ddp_worker.py OUT_DIR

(the test forks the two processes itself with :func:`run_rank`, which is faster). Each rank
trains the toy method a few steps on the CPU (gloo), then writes
``OUT_DIR/hash-{rank}.txt`` (a digest of its final state_dict) and, for every checkpoint it
wrote, ``OUT_DIR/saved-by-rank{rank}-step{N}``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from spkemb.data.sampler import item_rng
from spkemb.methods.base import Method, ema_update, freeze
from spkemb.train.report import Reporter
from spkemb.utils import distributed


class ToyData(Dataset):
    """``n`` random vectors; an item is two noisy views of one vector, the noise drawn from
    ``item_rng(seed, epoch, index)``. Items in ``bad`` are unreadable (``None``)."""

    def __init__(self, n: int = 32, dim: int = 8, seed: int = 0, bad: tuple[int, ...] = ()) -> None:
        self.x = torch.randn(n, dim, generator=torch.Generator().manual_seed(1234))
        self.seed = seed
        self.bad = set(bad)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if int(i) in self.bad:
            return None
        rng = item_rng(self.seed, getattr(i, "epoch", 0), int(i))
        noise = torch.from_numpy(rng.standard_normal((2, self.x.shape[1])).astype(np.float32))
        return self.x[i] + 0.1 * noise[0], self.x[i] + 0.1 * noise[1]


class ToyMethod(Method):
    """Student/EMA-teacher regression with a small queue of gathered teacher keys, dropout (so the
    global RNG matters) and a step-counter buffer: every kind of state a real method has."""

    crops_per_item = 2

    def __init__(
        self, dim: int = 8, out: int = 4, queue: int = 12, crash_at: int | None = None, nan_at: int | None = None
    ) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, out), nn.Dropout(0.2))
        self.teacher = freeze(nn.Sequential(nn.Linear(dim, out), nn.Dropout(0.0)))
        self.teacher.load_state_dict(self.encoder.state_dict())
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("queue", torch.zeros(queue, out))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.crash_at = crash_at
        self.nan_at = nan_at
        self._keys: torch.Tensor | None = None

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        a, b = batch
        z = self.encoder(a) * self.scale
        with torch.no_grad():
            k = self.teacher(b)
        self._keys = distributed.concat_all_gather(k)
        loss = ((z - k) ** 2).mean() + 0.01 * (z @ self.queue.T).pow(2).mean()
        if self.nan_at is not None and int(self.updates) + 1 >= self.nan_at:
            loss = loss * float("nan")
        return loss, {"queue_norm": float(self.queue.norm())}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int | None) -> None:
        ema_update(self.teacher, self.encoder, 0.9)
        assert self._keys is not None
        for row in self._keys:  # wrap around: enqueue sizes may vary
            self.queue[int(self.ptr)] = row
            self.ptr.copy_((self.ptr + 1) % self.queue.shape[0])
        self.updates += 1
        if self.crash_at is not None and step == self.crash_at:
            raise KeyboardInterrupt("simulated crash")


def state_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RecordingReporter(Reporter):
    """Keeps the lines the trainer has for the user."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str, warning: bool = False) -> None:
        self.lines.append(text)


def run_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    """What torchrun would do for one process: set its environment, then run :func:`main`
    (for ``multiprocessing`` with the fork start method, which spares re-importing torch)."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    main(out_dir)


def main(out_dir: str) -> None:
    import spkemb.train.trainer as trainer_mod
    from spkemb.train import TrainConfig, Trainer

    out = Path(out_dir)
    rank = int(os.environ["RANK"])
    torch.manual_seed(100 + rank)  # ranks start different: DDP must broadcast rank 0's weights
    method = ToyMethod()
    save = trainer_mod.save_checkpoint

    def recording_save(state, ckpt_dir, step, keep):  # type: ignore[no-untyped-def]
        (out / f"saved-by-rank{distributed.rank()}-step{step}").touch()
        return save(state, ckpt_dir, step, keep)

    trainer_mod.save_checkpoint = recording_save
    cfg = TrainConfig(
        method="toy",
        device="cpu",
        batch_size=4,
        lr=0.05,
        max_steps=5,
        warmup_steps=1,
        checkpoint_every=2,
        log_every=1,
        seed=3,
    )
    # item 5 is unreadable: the ranks' batches differ in size once, as with real corrupt audio
    reporter = RecordingReporter()
    summary = Trainer(method, ToyData(n=32, bad=(5,)), None, cfg, out / "exp", reporter=reporter).fit()
    (out / f"messages-{distributed.rank()}.txt").write_text("".join(m + "\n" for m in reporter.lines))
    (out / f"hash-{distributed.rank()}.txt").write_text(
        f"{state_digest(method)} {summary['steps']} {summary['skipped_items']}\n"
    )
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
