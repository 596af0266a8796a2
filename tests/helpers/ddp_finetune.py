"""One rank of a 2-process gloo finetune (AAM + SupCon-AAM with the loss gate), for test_finetune."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


def state_digest(module: torch.nn.Module) -> str:
    """Digest of the state that DDP keeps identical: everything but BatchNorm running statistics,
    which stay per rank by design (rank 0's are saved; see spkemb/methods/base.py)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if "running_" in name or name.endswith("num_batches_tracked"):
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_rank(rank: int, world: int, port: int, out_dir: str, manifest: str) -> None:
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
    from spkemb.data.manifest import read_manifest
    from spkemb.train import merge_config
    from spkemb.train.finetune import run_finetune
    from spkemb.train.trainer import Trainer
    from spkemb.utils import distributed

    captured: list[torch.nn.Module] = []
    fit = Trainer.fit

    def capture(self: Trainer, resume: bool | None = None) -> dict:  # type: ignore[type-arg]
        captured.append(self.method)
        return fit(self, resume)

    Trainer.fit = capture  # type: ignore[method-assign]
    cfg = merge_config({}, {
        "method": "supervised", "device": "cpu", "batch_size": 4, "max_steps": 4, "seed": 1, "log_every": 1,
        "encoder_kwargs": {"channels": 16, "mfa_channels": 48, "attention_channels": 8, "se_channels": 8,
                           "embed_dim": 16},
        "method_options": {"loss": "aam+supcon-aam", "loss_gate": True, "gate": {"warmup_epochs": 0},
                           "crop_seconds": 0.5},
    })  # fmt: skip
    torch.manual_seed(100 + rank)  # ranks start different: DDP must broadcast rank 0's weights
    summary = run_finetune(read_manifest(manifest), cfg, Path(out_dir) / "exp")
    (Path(out_dir) / f"hash-{distributed.rank()}.txt").write_text(f"{state_digest(captured[0])} {summary['steps']}\n")
    distributed.cleanup()
