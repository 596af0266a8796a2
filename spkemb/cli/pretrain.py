"""`spkemb pretrain`: learn an encoder from unlabelled audio (MoCo, SimCLR, CEL, DINO)."""

from __future__ import annotations

from pathlib import Path

import typer

from spkemb.cli.common import (
    Precision,
    complete_device,
    complete_encoders,
    complete_methods,
    console,
    guarded,
    method_metavar,
    print_json,
    run_training,
)


@guarded
def pretrain(
    manifest: str = typer.Argument(..., metavar="MANIFEST", help="Manifest TSV of (unlabelled) training audio."),
    output: Path = typer.Option(..., "-o", "--output", metavar="DIR", help="Experiment folder (exp/NAME)."),
    method: str | None = typer.Option(
        None,
        metavar=method_metavar("pretrain", ("none",)),
        autocompletion=complete_methods("pretrain", ("none",)),
        help="Method (none = a random encoder). [default: simclr, or the config's]",
    ),
    encoder: str | None = typer.Option(
        None,
        metavar="NAME",
        autocompletion=complete_encoders,
        help="Encoder (ecapa, resnet34, tdnn, ...). [default: ecapa]",
    ),
    encoder_opt: list[str] | None = typer.Option(
        None, "--encoder-opt", metavar="KEY=VALUE", help="Encoder option (repeatable), e.g. channels=1024."
    ),
    method_opt: list[str] | None = typer.Option(
        None, "--method-opt", metavar="KEY=VALUE", help="Method option (repeatable), e.g. queue_size=65536."
    ),
    frontend_weights: str | None = typer.Option(
        None,
        "--frontend-weights",
        metavar="PATH",
        help="Pretrained "
        "frontend weights for --encoder wavlm-mhfa: a torchaudio WavLM state "
        "dict or a Hugging Face folder (encoder option frontend_weights).",
    ),
    config: Path | None = typer.Option(
        None, "--config", metavar="FILE", help="YAML or TOML config; options given here override it."
    ),
    max_steps: int | None = typer.Option(None, metavar="N", help="Stop after this many optimiser steps."),
    max_minutes: float | None = typer.Option(None, metavar="MIN", help="Stop after this many minutes of training."),
    batch_size: int | None = typer.Option(None, metavar="N", help="Utterances per batch (each gives several crops)."),
    lr: float | None = typer.Option(None, metavar="LR", help="Peak learning rate."),
    noise: list[str] | None = typer.Option(
        None, "--noise", metavar="DIR", help="Noise folder (MUSAN layout or plain; repeatable)."
    ),
    rir: str | None = typer.Option(
        None, "--rir", metavar="DIR|simulate", help="Folder of room impulse responses, or 'simulate'."
    ),
    speed: bool | None = typer.Option(
        None,
        "--speed/--no-speed",
        help="Speed perturbation by 0.9, 1.0 or 1.1, "
        "once per utterance (its crops alike). [default: the config's, else off]",
    ),
    gain: bool | None = typer.Option(None, "--gain/--no-gain", help="Random gain in -6..6 dB per crop."),
    disjoint_crops: bool | None = typer.Option(
        None,
        "--disjoint-crops/--overlapping-crops",
        help="Crops of one utterance never overlap when they fit. [default: overlapping]",
    ),
    workers: int | None = typer.Option(None, "--workers", metavar="N", help="DataLoader worker processes."),
    checkpoint_every: int | None = typer.Option(None, metavar="N", help="Steps between checkpoints."),
    checkpoint_minutes: float | None = typer.Option(
        None, metavar="MIN", help="Also checkpoint after this many minutes since the last one. [default: 5]"
    ),
    device: str | None = typer.Option(
        None, metavar="[auto|cpu|cuda|cuda:N]", autocompletion=complete_device, help="Device. [default: auto]"
    ),
    precision: Precision | None = typer.Option(
        None,
        case_sensitive=False,
        help="Precision (bf16 is fast on CPUs with AMX and on GPUs; fp16 needs CUDA). [default: fp32]",
    ),
    seed: int | None = typer.Option(None, metavar="N", help="Random seed (data order, crops, augmentation, init)."),
    compile_: bool | None = typer.Option(
        None,
        "--compile/--no-compile",
        help="torch.compile the encoder (faster steps after a one-off compile). [default: the config's, else off]",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest good checkpoint in -o."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start again in an -o that holds checkpoints or an encoder.pt (they are replaced)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Pretrain a speaker encoder on MANIFEST without labels; writes config.yaml, checkpoints/,
    metrics.jsonl and encoder.pt into the experiment folder.

    Ctrl-C (or SIGTERM) finishes the step, writes a checkpoint and prints the command that resumes.
    Under `torchrun --nproc_per_node N` the same command trains with DDP (gloo on CPU, NCCL on GPU).
    Compute threads: one per core, or OMP_NUM_THREADS; jobs sharing a machine should together use
    at most its cores (two 2-thread jobs on 2 cores ran 7x slower than one), and a notice says
    when the machine is already busy.
    """
    from spkemb.data.manifest import read_manifest
    from spkemb.train.config import load_config, merge_config, parse_key_values
    from spkemb.train.pretrain import run_pretrain

    file_cfg = load_config(config) if config else {}
    data_over: dict[str, object] = {}
    if noise:
        data_over["noise"] = list(noise)
    if rir:
        data_over["rir"] = rir
    for key, value in (("speed", speed), ("gain", gain), ("disjoint_crops", disjoint_crops)):
        if value is not None:
            data_over[key] = value
    enc_kwargs = parse_key_values(encoder_opt, "--encoder-opt")
    if frontend_weights is not None:
        enc_kwargs["frontend_weights"] = frontend_weights
    overrides = {
        "method": method, "encoder": encoder, "max_steps": max_steps, "max_minutes": max_minutes,
        "batch_size": batch_size, "lr": lr, "num_workers": workers, "checkpoint_every": checkpoint_every,
        "checkpoint_minutes": checkpoint_minutes, "device": device, "seed": seed,
        "precision": precision.value if precision else None,
        "resume": resume or None, "overwrite": overwrite or None, "compile": compile_,
        "encoder_kwargs": enc_kwargs or None,
        "method_options": parse_key_values(method_opt, "--method-opt") or None,
        "data_options": data_over or None,
    }  # fmt: skip
    if (method or file_cfg.get("method")) == "none" and not (max_steps or max_minutes):
        overrides["max_steps"] = 1  # a random encoder trains no steps; the config still validates
    cfg = merge_config(file_cfg, overrides, source=config)
    utts = read_manifest(manifest)
    summary = run_training(lambda reporter: run_pretrain(utts, cfg, output, reporter=reporter))
    if summary is None:
        return  # under torchrun only rank 0 reports
    console.print(f"encoder written to {Path(output) / 'encoder.pt'}", highlight=False)
    if json_out:
        print_json(summary)
