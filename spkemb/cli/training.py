"""Running a training job from the command line: the reporter, the end of the process group, and
what an interrupted run prints (the command that resumes it)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import typer

from spkemb.cli.console import console
from spkemb.cli.params import PARAM_FIELDS

__all__ = ["resume_command", "run_training", "training_overrides"]


def resume_command() -> str:
    """The command line that resumes this run: the same arguments plus ``--resume``."""
    import shlex

    args = [a for a in sys.argv[1:] if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["spkemb", *args])


def run_training(job: Callable[[Any], dict[str, Any]], flags: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Run a training ``job(reporter)``; leave the process group at the end. Returns the summary on
    rank 0 (``None`` on other ranks); its reporter names option fields as ``flags`` (the command's). An
    interrupt that checkpointed exits 130 with the resume command."""
    from spkemb.cli.report import CliReporter
    from spkemb.train.trainer import TrainingInterrupted
    from spkemb.utils import distributed

    finished = False
    try:
        summary = job(CliReporter(flags=flags))
        main_rank = distributed.is_main()
        finished = True
    except TrainingInterrupted as err:
        if distributed.is_main():
            under = "your torchrun command, with " if distributed.world_size() > 1 else ""
            console.print(f"[bold]{err}[/]; resume with: {under}{resume_command()}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    finally:
        distributed.cleanup(wait=finished)
    return summary if main_rank else None


#: command parameters that go into ``data_options`` / ``method_options`` rather than the config's top level
_DATA_PARAMS = ("speed", "gain", "disjoint_crops")
_METHOD_PARAMS = (
    "loss", "loss_gate", "label_correction", "freeze_encoder_steps", "freeze_frontend_steps", "encoder_lr_scale",
)  # fmt: skip
#: parameters that are not part of the configuration
_NOT_CONFIG = ("manifest", "output", "config", "init", "labels", "json_out")


def training_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """A training command's parameters (its ``locals()``) as :func:`~spkemb.train.config.merge_config`
    overrides (``None``: not given): ``KEY=VALUE`` lists parsed, ``--noise``/``--rir``/``--speed``/...
    into ``data_options``, the finetune switches into ``method_options``, ``--frontend-weights`` into
    ``encoder_kwargs``, the rest by field name (``--workers`` sets ``num_workers``; see
    :data:`spkemb.cli.params.PARAM_FIELDS`). A new option of the config needs no change here."""
    from spkemb.train.config import parse_key_values

    p = dict(params)
    data_over = {k: p.pop(k) for k in _DATA_PARAMS if k in p}
    noise, rir = p.pop("noise", None), p.pop("rir", None)
    data_over.update(noise=list(noise) if noise else None, rir=rir or None)
    enc_kwargs = parse_key_values(p.pop("encoder_opt", None), "--encoder-opt")
    frontend = p.pop("frontend_weights", None)
    if frontend is not None:
        enc_kwargs["frontend_weights"] = frontend
    method_over = parse_key_values(p.pop("method_opt", None), "--method-opt")
    switches = {PARAM_FIELDS.get(k, k): p.pop(k) for k in _METHOD_PARAMS if k in p}
    method_over.update({k: v for k, v in switches.items() if v is not None})
    precision = p.pop("precision", None)
    out = {PARAM_FIELDS.get(k, k): v for k, v in p.items() if k not in _NOT_CONFIG}
    out.update(
        precision=precision.value if precision else None,
        resume=out.get("resume") or None,
        overwrite=out.get("overwrite") or None,
        encoder_kwargs=enc_kwargs or None,
        method_options=method_over or None,
        data_options={k: v for k, v in data_over.items() if v is not None} or None,
    )
    return out
