"""The pretrain job: manifest + configuration -> experiment folder with checkpoints and encoder.pt.

The CLI parses options into a :class:`TrainConfig` and calls :func:`run_pretrain`; nothing here
knows about the command line, so a Python user can run the same job.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from spkemb.data.manifest import Utterance
from spkemb.errors import InputError
from spkemb.train.config import TrainConfig, config_dict, dump_config, merge_config, typed_options
from spkemb.train.report import Reporter


def pretrain_config(
    file_cfg: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None, source: str | Path | None = None
) -> TrainConfig:
    """The pretrain configuration: defaults < ``file_cfg`` (read from ``source``) < ``overrides``
    (``None``: not given), checked (see :func:`~spkemb.train.config.merge_config`; ``method: none``
    needs no bound on the run) and its method one of ``none`` and the pretrain methods."""
    from spkemb.methods import list_methods

    # The method is checked first: a mistyped one is named before any other problem of the config.
    given = [m for m in ((overrides or {}).get("method"), (file_cfg or {}).get("method")) if m is not None]
    method = str(given[0]) if given else TrainConfig.method
    names = list_methods("pretrain")
    if method not in ("none", *names):
        raise InputError(f"unknown method {method!r} (choose none, {', '.join(names)})", source)
    return merge_config(file_cfg, overrides, source=source)


RANDOM_FRONTEND = (
    "{encoder}: no `encoder_kwargs.frontend_weights`, so its WavLM frontend is RANDOM and this run trains it from "
    "scratch (far more data and time than starting from a pretrained one). To start from a pretrained WavLM, stop and "
    "give `encoder_kwargs.frontend_weights` PATH (a torchaudio state dict or a Hugging Face folder)"
)


def build_encoder_from(cfg: TrainConfig, reporter: Reporter | None = None) -> nn.Module:
    """The configured encoder; an encoder that loaded pretrained parts (``frontend_loaded``, e.g.
    wavlm-mhfa's ``frontend_weights``) has that line shown through ``reporter``."""
    from spkemb.models import build_encoder

    encoder = build_encoder(cfg.encoder, **cfg.encoder_kwargs)
    note = getattr(encoder, "frontend_loaded", None)
    if note and reporter is not None:
        reporter.message(str(note))
    return encoder


def prepare_cpu(cfg: TrainConfig, reporter: Reporter | None = None) -> None:
    """Allocator tuning for CPU runs (see :func:`spkemb.utils.runtime.tune_cpu_allocator`), and a
    warning where bf16 would run emulated on this CPU."""
    from spkemb.utils.runtime import emulated_bf16, resolve_device, resolve_precision, tune_cpu_allocator

    device = resolve_device(cfg.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    note = emulated_bf16(resolve_precision(cfg.precision, device), device)
    if note and reporter is not None:
        reporter.message(note, warning=True)


def random_encoder(cfg: TrainConfig, out_dir: Path, reporter: Reporter | None = None) -> dict[str, Any]:
    """``method: none``: a randomly initialised encoder (seeded), for baselines and plumbing."""
    import torch

    from spkemb.models import describe_encoder, save_encoder

    if not cfg.overwrite:
        for existing in ("encoder.pt", "checkpoints"):
            if (out_dir / existing).exists():
                raise InputError(
                    f"already holds {existing}; refusing to replace it with a random encoder "
                    "(choose another output folder, or set `overwrite`)",
                    out_dir,
                )
    torch.manual_seed(cfg.seed)
    enc = build_encoder_from(cfg, reporter)
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out_dir / "config.yaml")
    path = save_encoder(enc, out_dir / "encoder.pt", extra={"method": "none", "seed": cfg.seed})
    info = describe_encoder(enc)
    return {"encoder": str(path), "method": "none", "parameters": info["parameters"], "steps": 0}


def run_pretrain(
    utts: list[Utterance], cfg: TrainConfig, out_dir: str | Path, reporter: Reporter | None = None
) -> dict[str, Any]:
    """Train ``cfg.method`` on ``utts`` into ``out_dir`` (resumable with ``cfg.resume``)."""
    from spkemb.methods import list_methods

    out = Path(out_dir)
    names = list_methods("pretrain")
    if cfg.method not in ("none", *names):
        raise InputError(f"method {cfg.method!r}: choose none, {', '.join(names)}")
    typed = typed_options(cfg)  # bad keys refused before any work
    if cfg.method == "none":
        return random_encoder(cfg, out, reporter)
    from spkemb.data.crops import collate_crops
    from spkemb.methods import build_method
    from spkemb.models import save_encoder
    from spkemb.train.data import DataOptions, crop_dataset
    from spkemb.train.trainer import Trainer, seed_everything

    if not utts:
        raise InputError("the manifest has no utterances to train on")
    seed_everything(cfg.seed)  # initial weights (and heads, queues) follow the seed
    prepare_cpu(cfg, reporter)
    encoder = build_encoder_from(cfg, reporter)
    if hasattr(encoder, "frontend_loaded") and encoder.frontend_loaded is None and reporter is not None:
        reporter.message(RANDOM_FRONTEND.format(encoder=cfg.encoder), warning=True)
    sr = int(getattr(encoder, "sample_rate"))  # noqa: B009
    method = build_method(cfg.method, encoder, typed.method)
    assert isinstance(typed.data, DataOptions)
    dataset = crop_dataset(utts, typed.data, method.crop_views(), sr, cfg.seed)

    def export(path: Path) -> None:
        save_encoder(method.encoder, path, extra={"method": cfg.method, "config": config_dict(cfg)})

    return Trainer(method, dataset, collate_crops, cfg, out, export_encoder=export, reporter=reporter).fit()
