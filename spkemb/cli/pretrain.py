"""`spkemb pretrain`: learn an encoder from unlabelled audio (MoCo, SimCLR, CEL, DINO)."""

from __future__ import annotations

from pathlib import Path

import typer

from spkemb.cli.common import console, guarded, print_json


@guarded
def pretrain(
    manifest: str = typer.Argument(..., help="Manifest TSV of (unlabelled) training audio."),
    output: Path = typer.Option(..., "-o", "--output", help="Experiment folder (exp/NAME)."),
    method: str | None = typer.Option(None, help="none (random encoder), moco, simclr, cel or dino. "
                                      "[default: simclr, or the config's]"),
    encoder: str | None = typer.Option(None, help="Encoder: ecapa, resnet34, tdnn. [default: ecapa]"),
    encoder_opt: list[str] | None = typer.Option(None, "--encoder-opt", help="Encoder option KEY=VALUE "
                                                 "(repeatable), e.g. channels=1024."),
    method_opt: list[str] | None = typer.Option(None, "--method-opt", help="Method option KEY=VALUE "
                                                "(repeatable), e.g. queue_size=65536."),
    config: Path | None = typer.Option(None, "--config", help="YAML or TOML config; options given here override it."),
    max_steps: int | None = typer.Option(None, help="Stop after this many optimiser steps."),
    max_minutes: float | None = typer.Option(None, help="Stop after this many minutes of training."),
    batch_size: int | None = typer.Option(None, help="Utterances per batch (each gives several crops)."),
    lr: float | None = typer.Option(None, help="Peak learning rate."),
    noise: list[str] | None = typer.Option(None, "--noise", help="Noise folder (MUSAN layout or plain; repeatable)."),
    rir: str | None = typer.Option(None, "--rir", help="Folder of room impulse responses, or 'simulate'."),
    speed: bool | None = typer.Option(None, "--speed/--no-speed", help="Speed perturbation by 0.9, 1.0 or 1.1, "
                                      "once per utterance (its crops alike). [default: the config's, else off]"),
    gain: bool | None = typer.Option(None, "--gain/--no-gain", help="Random gain in -6..6 dB per crop."),
    disjoint_crops: bool | None = typer.Option(None, "--disjoint-crops/--overlapping-crops", help="Crops of "
                                               "one utterance never overlap when they fit. [default: overlapping]"),
    workers: int | None = typer.Option(None, "--workers", help="DataLoader workers."),
    checkpoint_every: int | None = typer.Option(None, help="Steps between checkpoints."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    precision: str | None = typer.Option(None, help="fp32, bf16 or fp16."),
    seed: int | None = typer.Option(None, help="Random seed (data order, crops, augmentation, init)."),
    compile_: bool | None = typer.Option(None, "--compile/--no-compile", help="torch.compile the encoder "
                                         "(faster steps after a one-off compile). [default: the config's, else off]"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest good checkpoint in -o."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Pretrain a speaker encoder on MANIFEST without labels; writes config.yaml, checkpoints/,
    metrics.jsonl and encoder.pt into the experiment folder.

    Under `torchrun --nproc_per_node N` the same command trains with DDP (gloo on CPU, NCCL on GPU).
    """
    from spkemb.data.manifest import read_manifest
    from spkemb.train.config import load_config, merge_config, parse_key_values
    from spkemb.train.pretrain import run_pretrain

    file_cfg = load_config(config) if config else {}
    data_over = {}
    if noise:
        data_over["noise"] = list(noise)
    if rir:
        data_over["rir"] = rir
    for key, value in (("speed", speed), ("gain", gain), ("disjoint_crops", disjoint_crops)):
        if value is not None:
            data_over[key] = value
    overrides = {
        "method": method, "encoder": encoder, "max_steps": max_steps, "max_minutes": max_minutes,
        "batch_size": batch_size, "lr": lr, "num_workers": workers, "checkpoint_every": checkpoint_every,
        "device": device, "precision": precision, "seed": seed, "resume": resume or None,
        "compile": compile_,
        "encoder_kwargs": parse_key_values(encoder_opt, "--encoder-opt") or None,
        "method_options": parse_key_values(method_opt, "--method-opt") or None,
        "data_options": data_over or None,
    }
    if (method or file_cfg.get("method")) == "none" and not (max_steps or max_minutes):
        overrides["max_steps"] = 1  # a random encoder trains no steps; the config still validates
    cfg = merge_config(file_cfg, overrides, source=config)
    utts = read_manifest(manifest)
    from spkemb.train import distributed

    try:
        summary = run_pretrain(utts, cfg, output)
        main_rank = distributed.is_main()
    finally:
        distributed.cleanup()
    if not main_rank:
        return  # under torchrun only rank 0 reports
    console.print(f"encoder written to {Path(output) / 'encoder.pt'}", highlight=False)
    if json_out:
        print_json(summary)
