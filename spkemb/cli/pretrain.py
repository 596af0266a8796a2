"""`spkemb pretrain`: learn an encoder from unlabelled audio (MoCo, SimCLR, CEL, DINO)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spkemb.cli.console import console, print_json
from spkemb.cli.errors import guarded
from spkemb.cli.params import (
    BatchSize,
    CheckpointEvery,
    CheckpointMinutes,
    Compile,
    ConfigFile,
    Device,
    DisjointCrops,
    Encoder,
    EncoderOpt,
    FrontendWeights,
    Gain,
    JsonOut,
    Lr,
    MaxMinutes,
    MaxSteps,
    MethodOpt,
    Noise,
    Output,
    Overwrite,
    PrecisionOpt,
    PretrainMethod,
    Resume,
    Rir,
    Seed,
    Speed,
    Workers,
    command_flags,
)
from spkemb.cli.training import run_training, training_overrides


@guarded
def pretrain(
    manifest: Annotated[str, typer.Argument(metavar="MANIFEST", help="Manifest TSV of (unlabelled) training audio.")],
    output: Output,
    method: PretrainMethod = None,
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
    gain: Gain = None,
    disjoint_crops: DisjointCrops = None,
    workers: Workers = None,
    checkpoint_every: CheckpointEvery = None,
    checkpoint_minutes: CheckpointMinutes = None,
    device: Device = None,
    precision: PrecisionOpt = None,
    seed: Seed = None,
    compile_: Compile = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Pretrain a speaker encoder on MANIFEST without labels; writes config.yaml, checkpoints/,
    metrics.jsonl and encoder.pt into the experiment folder.

    Ctrl-C (or SIGTERM) finishes the step, writes a checkpoint and prints the command that resumes.
    Under `torchrun --nproc_per_node N` the same command trains with DDP (gloo on CPU, NCCL on GPU).
    Compute threads: one per core, or OMP_NUM_THREADS; jobs sharing a machine should together use
    at most its cores (two 2-thread jobs on 2 cores ran 7x slower than one), and a notice says
    when the machine is already busy.
    """
    overrides = training_overrides(locals())  # first: the parameters only
    from spkemb.data.manifest import read_manifest
    from spkemb.train.config import load_config
    from spkemb.train.pretrain import pretrain_config, run_pretrain

    utts = read_manifest(manifest)  # the inputs before the policy (an unbounded run): a missing file is named
    cfg = pretrain_config(load_config(config) if config else {}, overrides, source=config)
    summary = run_training(lambda reporter: run_pretrain(utts, cfg, output, reporter=reporter), command_flags(pretrain))
    if summary is None:
        return  # under torchrun only rank 0 reports
    console.print(f"encoder written to {Path(output) / 'encoder.pt'}", highlight=False)
    if json_out:
        print_json(summary)
