"""`spkemb finetune`: train an encoder on speaker labels (AAM, sub-centre AAM, SupCon+AAM)."""

from __future__ import annotations

from pathlib import Path

import typer

from spkemb.cli.common import (
    Precision,
    complete_device,
    complete_encoders,
    console,
    guarded,
    print_json,
    run_training,
)


@guarded
def finetune(
    manifest: str = typer.Argument(..., metavar="MANIFEST", help="Manifest TSV of the training audio."),
    output: Path = typer.Option(..., "-o", "--output", metavar="DIR", help="Experiment folder (exp/NAME)."),
    init: str | None = typer.Option(
        None,
        "--init",
        metavar="EXP|encoder.pt",
        help="Start from this pretrained encoder (an experiment folder or an encoder.pt); its architecture is used.",
    ),
    labels: str | None = typer.Option(
        None,
        "--labels",
        metavar="FILE",
        help="'utt_id label' lines (e.g. from spkemb cluster) instead of the manifest's speaker column.",
    ),
    loss: str | None = typer.Option(
        None, "--loss", metavar="[aam|subcenter-aam|supcon-aam|aam+supcon-aam]", help="The loss. [default: aam]"
    ),
    loss_gate: bool | None = typer.Option(
        None,
        "--loss-gate/--no-loss-gate",
        help="Train each epoch only on the low-loss items of the previous one (for pseudo-labels).",
    ),
    label_correction: bool | None = typer.Option(
        None, "--label-correction/--no-label-correction", help="Relabel items confidently predicted as another speaker."
    ),
    freeze_encoder_steps: int | None = typer.Option(
        None, metavar="N", help="Train only the head for the first N steps."
    ),
    freeze_frontend_steps: int | None = typer.Option(
        None,
        metavar="N",
        help="Run the encoder's pretrained frontend "
        "(WavLM) frozen for the first N steps: its pooling and the "
        "head learn first.",
    ),
    encoder_lr_scale: float | None = typer.Option(
        None,
        metavar="X",
        help="The encoder's lr relative to the head's (e.g. 0.1 for a pretrained encoder). [default: 1]",
    ),
    encoder: str | None = typer.Option(
        None, metavar="NAME", autocompletion=complete_encoders, help="Encoder when not --init. [default: ecapa]"
    ),
    encoder_opt: list[str] | None = typer.Option(
        None, "--encoder-opt", metavar="KEY=VALUE", help="Encoder option (repeatable)."
    ),
    method_opt: list[str] | None = typer.Option(
        None, "--method-opt", metavar="KEY=VALUE", help="Finetuning option (repeatable), e.g. margin=0.3 n_crops=2."
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
    batch_size: int | None = typer.Option(None, metavar="N", help="Utterances per batch (P speakers x K)."),
    lr: float | None = typer.Option(None, metavar="LR", help="Peak learning rate (of the head)."),
    noise: list[str] | None = typer.Option(None, "--noise", metavar="DIR", help="Noise folder (repeatable)."),
    rir: str | None = typer.Option(None, "--rir", metavar="DIR|simulate", help="RIR folder, or 'simulate'."),
    workers: int | None = typer.Option(None, "--workers", metavar="N", help="DataLoader worker processes."),
    device: str | None = typer.Option(
        None, metavar="[auto|cpu|cuda|cuda:N]", autocompletion=complete_device, help="Device. [default: auto]"
    ),
    precision: Precision | None = typer.Option(None, case_sensitive=False, help="Precision. [default: fp32]"),
    seed: int | None = typer.Option(None, metavar="N", help="Random seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest good checkpoint in -o."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start again in an -o that holds checkpoints or an encoder.pt."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Finetune a speaker encoder on labels: the manifest's speakers, or --labels from spkemb cluster.

    Writes config.yaml, checkpoints/, metrics.jsonl (loss, acc, margin, lr, gate_*), classes.txt and
    encoder.pt, so `spkemb extract` works on the folder unchanged. Ctrl-C checkpoints and prints the
    resume command; `torchrun --nproc_per_node N -m spkemb finetune ...` trains with DDP.
    Compute threads: one per core, or OMP_NUM_THREADS; jobs sharing a machine should together use
    at most its cores (two 2-thread jobs on 2 cores ran 7x slower than one), and a notice says
    when the machine is already busy.
    """
    from spkemb.data.labels import read_labels
    from spkemb.data.manifest import read_manifest
    from spkemb.train.config import load_config, merge_config, parse_key_values
    from spkemb.train.finetune import init_config, run_finetune

    file_cfg = load_config(config) if config else {}
    method_over = parse_key_values(method_opt, "--method-opt")
    for key, value in (
        ("loss", loss),
        ("loss_gate", loss_gate),
        ("label_correction", label_correction),
        ("freeze_encoder_steps", freeze_encoder_steps),
        ("freeze_frontend_steps", freeze_frontend_steps),
        ("encoder_lr_scale", encoder_lr_scale),
    ):
        if value is not None:
            method_over[key] = value
    data_over: dict[str, object] = {}
    if noise:
        data_over["noise"] = list(noise)
    if rir:
        data_over["rir"] = rir
    enc_name, enc_kwargs = encoder, parse_key_values(encoder_opt, "--encoder-opt") or None
    if frontend_weights is not None:
        enc_kwargs = {**(enc_kwargs or {}), "frontend_weights": frontend_weights}
    if init is not None and encoder is None and "encoder" not in file_cfg:
        arch = init_config(init)  # the architecture of the pretrained encoder
        enc_name, enc_kwargs = str(arch.pop("name")), {**arch, **(enc_kwargs or {})}
    overrides = {
        "method": "supervised", "encoder": enc_name, "encoder_kwargs": enc_kwargs, "max_steps": max_steps,
        "max_minutes": max_minutes, "batch_size": batch_size, "lr": lr, "num_workers": workers, "device": device,
        "precision": precision.value if precision else None, "seed": seed, "resume": resume or None,
        "overwrite": overwrite or None, "method_options": method_over or None, "data_options": data_over or None,
    }  # fmt: skip
    cfg = merge_config(file_cfg, overrides, source=config)
    utts = read_manifest(manifest)
    label_map = read_labels(labels) if labels else None
    summary = run_training(
        lambda reporter: run_finetune(
            utts, cfg, output, init=init, labels=label_map, labels_path=labels, reporter=reporter
        )
    )
    if summary is None:
        return
    console.print(f"encoder written to {Path(output) / 'encoder.pt'}", highlight=False)
    if json_out:
        print_json(summary)
