"""The pretrain job: manifest + configuration -> experiment folder with checkpoints and encoder.pt.

The CLI parses options into a :class:`TrainConfig` and calls :func:`run_pretrain`; nothing here
knows about the command line, so a Python user can run the same job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spkemb.data.manifest import Utterance
from spkemb.errors import InputError
from spkemb.train.config import TrainConfig, config_dict, dump_config

#: what ``data_options`` may hold: augmentation (folders, switches, probabilities) and crop sampling
DATA_OPTIONS = ("noise", "rir", "speed", "gain", "p_noise", "p_reverb", "disjoint_crops")


def build_encoder_from(cfg: TrainConfig) -> Any:
    from spkemb.models import build_encoder

    return build_encoder(cfg.encoder, **cfg.encoder_kwargs)


def random_encoder(cfg: TrainConfig, out_dir: Path) -> dict[str, Any]:
    """``--method none``: a randomly initialised encoder (seeded), for baselines and plumbing."""
    import torch

    from spkemb.models import describe_encoder, save_encoder

    for existing in ("encoder.pt", "checkpoints"):
        if (out_dir / existing).exists():
            raise InputError(f"already holds {existing}; refusing to replace it with a random encoder "
                             "(choose another -o)", out_dir)
    torch.manual_seed(cfg.seed)
    enc = build_encoder_from(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out_dir / "config.yaml")
    path = save_encoder(enc, out_dir / "encoder.pt", extra={"method": "none", "seed": cfg.seed})
    info = describe_encoder(enc)
    return {"encoder": str(path), "method": "none", "parameters": info["parameters"], "steps": 0}


def run_pretrain(utts: list[Utterance], cfg: TrainConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train ``cfg.method`` on ``utts`` into ``out_dir`` (resumable with ``cfg.resume``)."""
    from spkemb.methods import list_methods

    out = Path(out_dir)
    if cfg.method not in ("none", *list_methods()):
        raise InputError(f"method {cfg.method!r}: choose none, {', '.join(list_methods())}")
    if cfg.method == "none":
        return random_encoder(cfg, out)
    from spkemb.augment.chain import from_options
    from spkemb.data.crops import CropDataset, collate_crops
    from spkemb.methods import build_method, method_views
    from spkemb.models import save_encoder
    from spkemb.train.trainer import Trainer, seed_everything

    if not utts:
        raise InputError("the manifest has no utterances to train on")
    data = dict(cfg.data_options)
    unknown = sorted(set(data) - set(DATA_OPTIONS))
    if unknown:
        raise InputError(f"data_options: unknown key {unknown[0]!r} (known: {', '.join(DATA_OPTIONS)})")
    seed_everything(cfg.seed)  # initial weights (and heads, queues) follow --seed
    from spkemb.runtime import resolve_device, tune_cpu_allocator

    if resolve_device(cfg.device).type == "cpu":
        tune_cpu_allocator()
    encoder = build_encoder_from(cfg)
    sr = int(encoder.sample_rate)
    augmenter = None
    if data.get("noise") or data.get("rir") or data.get("speed") or data.get("gain"):
        augmenter = from_options(
            noise_dirs=data.get("noise") or None,
            rir=data.get("rir"),
            speed=bool(data.get("speed", False)),
            gain=bool(data.get("gain", False)),
            sample_rate=sr,
            p_noise=float(data.get("p_noise", 0.6)),
            p_reverb=float(data.get("p_reverb", 0.3)),
        )
    method = build_method(cfg.method, encoder, **cfg.method_options)
    views = method_views(cfg.method, **cfg.method_options)
    dataset = CropDataset(utts, sr, views, augmenter=augmenter, seed=cfg.seed,
                          disjoint=bool(data.get("disjoint_crops", False)))

    def export(path: Path) -> None:
        save_encoder(method.encoder, path, extra={"method": cfg.method, "config": config_dict(cfg)})

    return Trainer(method, dataset, collate_crops, cfg, out, export_encoder=export).fit()
