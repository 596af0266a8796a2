"""Training: one Trainer shared by ``pretrain`` and ``finetune``.

Typical use from a command::

    from spkemb.train import Trainer, load_config, merge_config, seed_everything
    from spkemb.train import distributed

    cfg = merge_config(load_config(config_file) if config_file else {}, cli_options, source=config_file)
    seed_everything(cfg.seed)                      # before building the method: reproducible init
    method = build_method(cfg)                     # a spkemb.methods.base.Method
    summary = Trainer(method, dataset, collate, cfg, out_dir, export_encoder=save_encoder).fit()
    distributed.cleanup()

Modules: :mod:`.config` (TrainConfig, YAML/TOML), :mod:`.schedule` (warm-up + cosine),
:mod:`.distributed` (torchrun, devices, collectives), :mod:`.checkpoint` (atomic save, resume),
:mod:`.trainer` (the loop).
"""

from spkemb.train.checkpoint import find_resume_checkpoint, load_checkpoint
from spkemb.train.config import TrainConfig, dump_config, load_config, merge_config
from spkemb.train.trainer import Trainer, seed_everything, skip_none_collate

__all__ = [
    "TrainConfig",
    "Trainer",
    "dump_config",
    "find_resume_checkpoint",
    "load_checkpoint",
    "load_config",
    "merge_config",
    "seed_everything",
    "skip_none_collate",
]
