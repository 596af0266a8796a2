"""`spkemb finetune`: train an encoder on speaker labels (AAM, sub-centre AAM, SupCon+AAM)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spkemb.cli.console import console, print_json
from spkemb.cli.errors import guarded
from spkemb.cli.params import (
    BatchSize,
    ConfigFile,
    Device,
    Encoder,
    EncoderLrScale,
    EncoderOpt,
    FreezeEncoderSteps,
    FreezeFrontendSteps,
    FrontendWeights,
    Init,
    JsonOut,
    LabelCorrection,
    Labels,
    Loss,
    LossGate,
    Lr,
    MaxMinutes,
    MaxSteps,
    MethodOpt,
    Noise,
    Output,
    Overwrite,
    PrecisionOpt,
    Resume,
    Rir,
    Seed,
    Speed,
    Workers,
    command_flags,
)
from spkemb.cli.training import run_training, training_overrides


@guarded
def finetune(
    manifest: Annotated[str, typer.Argument(metavar="MANIFEST", help="Manifest TSV of the training audio.")],
    output: Output,
    init: Init = None,
    labels: Labels = None,
    loss: Loss = None,
    loss_gate: LossGate = None,
    label_correction: LabelCorrection = None,
    freeze_encoder_steps: FreezeEncoderSteps = None,
    freeze_frontend_steps: FreezeFrontendSteps = None,
    encoder_lr_scale: EncoderLrScale = None,
    encoder: Encoder = None,
    encoder_opt: EncoderOpt = None,
    method_opt: MethodOpt = None,
    frontend_weights: FrontendWeights = None,
    config: ConfigFile = None,
    max_steps: MaxSteps = None,
    max_minutes: MaxMinutes = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    noise: Noise = None,
    rir: Rir = None,
    speed: Speed = None,
    workers: Workers = None,
    device: Device = None,
    precision: PrecisionOpt = None,
    seed: Seed = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Finetune a speaker encoder on labels: the manifest's speakers, or --labels from spkemb cluster.

    Writes config.yaml, checkpoints/, metrics.jsonl (loss, acc, margin, lr, gate_*), classes.txt and
    encoder.pt, so `spkemb extract` works on the folder unchanged. With --speed each speed factor is a
    class of its own (x3 speakers, as the Kaldi and WeSpeaker recipes; --method-opt
    speed_as_speaker=false keeps the speaker's class). Ctrl-C checkpoints and prints the
    resume command; `torchrun --nproc_per_node N -m spkemb finetune ...` trains with DDP.
    Compute threads: one per core, or OMP_NUM_THREADS; jobs sharing a machine should together use
    at most its cores (two 2-thread jobs on 2 cores ran 7x slower than one), and a notice says
    when the machine is already busy.
    """
    overrides = training_overrides(locals())  # first: the parameters only
    from spkemb.data.labels import read_labels
    from spkemb.data.manifest import read_manifest
    from spkemb.train.config import load_config
    from spkemb.train.finetune import finetune_config, run_finetune

    utts = read_manifest(manifest)  # the inputs before the policy (an unbounded run): a missing file is named
    label_map = read_labels(labels) if labels else None
    cfg = finetune_config(load_config(config) if config else {}, overrides, init=init, source=config)
    summary = run_training(
        lambda reporter: run_finetune(
            utts,
            cfg,
            output,
            init=init,
            labels=label_map,
            labels_path=labels,
            reporter=reporter,
            manifest_path=manifest,
        ),
        command_flags(finetune),
    )
    if summary is None:
        return
    console.print(f"encoder written to {Path(output) / 'encoder.pt'}", highlight=False)
    if json_out:
        print_json(summary)
