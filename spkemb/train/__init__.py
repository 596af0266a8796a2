"""Training: one Trainer shared by ``pretrain`` and ``finetune``.

Typical use::

    from spkemb.train import Trainer, merge_config, seed_everything

    cfg = merge_config(load_config(config_file) if config_file else {}, overrides, source=config_file)
    seed_everything(cfg.seed)                      # before building the method: reproducible init
    method = build_method(cfg.method, encoder, **cfg.method_options)   # a spkemb.methods.Method
    dataset = crop_dataset(utts, DataOptions(), method.crop_views(), encoder.sample_rate, cfg.seed)
    summary = Trainer(method, dataset, collate_crops, cfg, out_dir, export_encoder=save).fit()

(``examples/python_api.py`` runs this at toy sizes.) The commands' jobs are
:func:`.pretrain.run_pretrain` and :func:`.finetune.run_finetune`, their configurations
:func:`.pretrain.pretrain_config` and :func:`.finetune.finetune_config`.

Modules: :mod:`.config` (TrainConfig, YAML/TOML), :mod:`.schedule` (warm-up + cosine),
:mod:`.checkpoint` (atomic save, resume), :mod:`.resume` (refusals, picking and restoring a
checkpoint), :mod:`.optim` (optimiser, seeding, threads), :mod:`.batching` (collate, device moves),
:mod:`.report` (the Reporter interface), :mod:`.trainer` (the loop), :mod:`.data` (data options and
the crop dataset), :mod:`.pretrain` (the pretrain job). Names are imported on first use, so the
command line can read :mod:`.report` without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spkemb.train.batching import skip_none_collate
    from spkemb.train.checkpoint import find_resume_checkpoint, load_checkpoint
    from spkemb.train.config import TrainConfig, dump_config, load_config, merge_config
    from spkemb.train.optim import seed_everything
    from spkemb.train.report import Reporter
    from spkemb.train.trainer import Trainer, TrainingInterrupted

_WHERE = {
    "TrainConfig": "config", "dump_config": "config", "load_config": "config", "merge_config": "config",
    "find_resume_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "Trainer": "trainer", "TrainingInterrupted": "trainer",
    "seed_everything": "optim", "skip_none_collate": "batching", "Reporter": "report",
}  # fmt: skip

__all__ = [
    "Reporter",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "dump_config",
    "find_resume_checkpoint",
    "load_checkpoint",
    "load_config",
    "merge_config",
    "seed_everything",
    "skip_none_collate",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"spkemb.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
