"""The command line's shared parameters: each option of the training commands declared once, as an
``Annotated`` type, with its ``[default: ...]`` rendered from the option dataclass that holds the
default, and the choices of ``--method``, ``--encoder``, ``--device``, ``--precision`` and ``--loss``.

``pretrain`` and ``finetune`` take these as ``max_steps: MaxSteps = None``. ``None`` means "not given":
the config file's value, else the dataclass default, applies (:func:`spkemb.train.config.merge_config`).
Defaults of option classes whose module imports torch are read from their source
(:func:`spkemb.utils.discover.option_defaults`), so that ``--help`` stays fast.

:func:`command_flags` maps option fields to the flags of a command (the core's messages name
fields; :func:`spkemb.cli.errors.guarded` shows flags).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from spkemb.train.config import TrainConfig
from spkemb.utils.choices import DEVICE_CHOICES, EXTRACT_PRECISIONS, TRAIN_PRECISIONS
from spkemb.utils.discover import literal_choices, option_defaults

__all__ = [
    "ExtractPrecision",
    "Precision",
    "LOSSES",
    "complete_device",
    "complete_encoders",
    "complete_methods",
    "method_metavar",
    "shown",
    "command_flags",
    "PARAM_FIELDS",
]

_TRAIN = TrainConfig.field_defaults()
_AUGMENT = option_defaults("augment/options.py", "AugmentOptions")
_DATA = option_defaults("train/data.py", "DataOptions")
_SUPERVISED = option_defaults("methods/supervised.py", "SupervisedOptions")
#: ``--loss`` choices, from the ``Loss`` type of :mod:`spkemb.methods.supervised`
LOSSES = literal_choices("methods/supervised.py", "Loss")

#: the training commands' ``--precision`` choices, from :mod:`spkemb.utils.choices` (auto too)
Precision = StrEnum("Precision", {p: p for p in TRAIN_PRECISIONS})  # type: ignore[misc]
#: ``extract --precision`` choices (int8 too)
ExtractPrecision = StrEnum("ExtractPrecision", {p: p for p in EXTRACT_PRECISIONS})  # type: ignore[misc]

#: command parameters whose option field has another name (``--workers`` sets ``num_workers``); a key
#: ``command.param`` holds for that command only
PARAM_FIELDS = {
    "workers": "num_workers",
    "compile_": "compile",
    "encoder_opt": "encoder_kwargs",
    "method_opt": "method_options",
    "frontend_weights": "encoder_kwargs.frontend_weights",
    "label_correction": "gate.correct",
    "kmeans_impl": "kmeans",
    "ahc_kind": "ahc",
    "prepare.threads": "workers",  # prepare's --threads sets PrepareOptions.workers (--workers: its old name)
}


def shown(value: Any, what: str = "") -> str:
    """``[default: VALUE]`` for help text: ``on``/``off`` for bools, ``5`` for 5.0; ``what`` replaces
    the value's text (``"the config's, else {}"``: ``{}`` is the value)."""
    if isinstance(value, bool):
        text = "on" if value else "off"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    return f"[default: {what.format(text) if what else text}]"


def method_metavar(kind: str, extra: Sequence[str] = ()) -> str:
    """``[a|b|c]`` of the methods of ``kind``, read from the registry's declarations (no torch import)."""
    from spkemb.utils.discover import method_names

    return "[" + "|".join([*extra, *method_names(kind)]) + "]"


def complete_methods(kind: str, extra: Sequence[str] = ()) -> Callable[[str], list[str]]:
    """Shell completion for a ``--method`` option."""

    def complete(incomplete: str) -> list[str]:
        from spkemb.utils.discover import method_names

        return [n for n in [*extra, *method_names(kind)] if n.startswith(incomplete)]

    return complete


def complete_encoders(incomplete: str) -> list[str]:
    """Shell completion for ``--encoder``."""
    from spkemb.utils.discover import encoder_names

    return [n for n in encoder_names() if n.startswith(incomplete)]


def complete_device(incomplete: str) -> list[str]:
    """Completion for ``--device``: auto, cpu, cuda (``cuda:N`` is accepted too)."""
    return [c for c in DEVICE_CHOICES if c.startswith(incomplete)]


def _complete_losses(incomplete: str) -> list[str]:
    return [c for c in LOSSES if c.startswith(incomplete)]


def command_flags(func: Callable[..., Any]) -> dict[str, str]:
    """``option field -> flag`` for the options of command function ``func`` (``num_workers`` ->
    ``--workers``), read from its typer declarations (``Annotated`` or default ``typer.Option``)."""
    import inspect
    import typing

    from typer.models import OptionInfo

    hints = typing.get_type_hints(func, include_extras=True)
    out: dict[str, str] = {}
    for name, param in inspect.signature(func).parameters.items():
        infos = [m for m in getattr(hints.get(name), "__metadata__", ()) if isinstance(m, OptionInfo)]
        if isinstance(param.default, OptionInfo):
            infos.append(param.default)
        if not infos:
            continue
        decls = [d.split("/")[0] for d in (infos[0].param_decls or ()) if d.startswith("--")]
        if isinstance(infos[0].default, str) and infos[0].default.startswith("--"):
            decls.insert(0, infos[0].default.split("/")[0])  # typer.Option("--x") outside Annotated
        flag = decls[0] if decls else "--" + name.rstrip("_").replace("_", "-")
        out[PARAM_FIELDS.get(f"{func.__name__}.{name}", PARAM_FIELDS.get(name, name))] = flag
        out.setdefault(name, flag)
    return out


# -- the training commands' options -----------------------------------------------------------------

Output = Annotated[Path, typer.Option("-o", "--output", metavar="DIR", help="Experiment folder (exp/NAME).")]
Encoder = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        autocompletion=complete_encoders,
        help="Encoder (ecapa, resnet34, tdnn, ...; finetune: --init's when not given). " + shown(_TRAIN["encoder"]),
    ),
]
EncoderOpt = Annotated[
    list[str] | None,
    typer.Option("--encoder-opt", metavar="KEY=VALUE", help="Encoder option (repeatable), e.g. channels=1024."),
]
MethodOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--method-opt",
        metavar="KEY=VALUE",
        help="Method option (repeatable; a dotted key sets a nested one), e.g. queue_size=65536 (moco), "
        "margin=0.3 or gate.threshold=0.6 (finetune).",
    ),
]
FrontendWeights = Annotated[
    str | None,
    typer.Option(
        "--frontend-weights",
        metavar="PATH",
        help="Pretrained frontend weights for --encoder wavlm-mhfa: a torchaudio WavLM state dict or a Hugging "
        "Face folder (encoder option frontend_weights).",
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", metavar="FILE", help="YAML or TOML config; options given here override it."),
]
MaxSteps = Annotated[int | None, typer.Option(metavar="N", help="Stop after this many optimiser steps.")]
MaxMinutes = Annotated[float | None, typer.Option(metavar="MIN", help="Stop after this many minutes of training.")]
BatchSize = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="Utterances per batch, per process (pretrain: each gives several crops; finetune: P speakers x K). "
        + shown(_TRAIN["batch_size"]),
    ),
]
Lr = Annotated[
    float | None, typer.Option(metavar="LR", help="Peak learning rate (finetune: of the head). " + shown(_TRAIN["lr"]))
]
Noise = Annotated[
    list[str] | None,
    typer.Option("--noise", metavar="DIR", help="Noise folder (MUSAN layout or plain; repeatable)."),
]
Rir = Annotated[
    str | None,
    typer.Option("--rir", metavar="DIR|simulate", help="Folder of room impulse responses, or 'simulate'."),
]
Workers = Annotated[
    int | None,
    typer.Option("--workers", metavar="N", help="DataLoader worker processes. " + shown(_TRAIN["num_workers"])),
]
Device = Annotated[
    str | None,
    typer.Option(
        metavar="[auto|cpu|cuda|cuda:N]", autocompletion=complete_device, help="Device. " + shown(_TRAIN["device"])
    ),
]
PrecisionOpt = Annotated[
    Precision | None,
    typer.Option(
        "--precision",
        case_sensitive=False,
        help="Precision: auto = bf16 where the device computes it natively (GPUs with bf16, CPUs with AMX or "
        "AVX512-BF16), else fp32; fp16 needs CUDA. " + shown(_TRAIN["precision"]),
    ),
]
Seed = Annotated[
    int | None,
    typer.Option(metavar="N", help="Random seed (data order, crops, augmentation, init). " + shown(_TRAIN["seed"])),
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the newest good checkpoint in -o.")]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Start again in an -o that holds checkpoints or an encoder.pt (they are replaced)."
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]

# pretrain's own
PretrainMethod = Annotated[
    str | None,
    typer.Option(
        metavar=method_metavar("pretrain", ("none",)),
        autocompletion=complete_methods("pretrain", ("none",)),
        help="Method (none = a random encoder). " + shown(_TRAIN["method"], "{}, or the config's"),
    ),
]
Speed = Annotated[
    bool | None,
    typer.Option(
        "--speed/--no-speed",
        help="Speed perturbation by 0.9, 1.0 or 1.1, once per utterance (its crops alike). "
        + shown(_AUGMENT["speed"], "the config's, else {}"),
    ),
]
Gain = Annotated[
    bool | None,
    typer.Option("--gain/--no-gain", help="Random gain in -6..6 dB per crop. " + shown(_AUGMENT["gain"])),
]
DisjointCrops = Annotated[
    bool | None,
    typer.Option(
        "--disjoint-crops/--overlapping-crops",
        help="Crops of one utterance never overlap when they fit. "
        + shown("disjoint" if _DATA["disjoint_crops"] else "overlapping"),
    ),
]
CheckpointEvery = Annotated[
    int | None, typer.Option(metavar="N", help="Steps between checkpoints. " + shown(_TRAIN["checkpoint_every"]))
]
CheckpointMinutes = Annotated[
    float | None,
    typer.Option(
        metavar="MIN",
        help="Also checkpoint after this many minutes since the last one. " + shown(_TRAIN["checkpoint_minutes"]),
    ),
]
Compile = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile the encoder (faster steps after a one-off compile). "
        + shown(_TRAIN["compile"], "the config's, else {}"),
    ),
]

# finetune's own
Init = Annotated[
    str | None,
    typer.Option(
        "--init",
        metavar="EXP|encoder.pt",
        help="Start from this pretrained encoder (an experiment folder or an encoder.pt); its architecture is used.",
    ),
]
Labels = Annotated[
    str | None,
    typer.Option(
        "--labels",
        metavar="FILE",
        help="'utt_id label' lines (e.g. from spkemb cluster) instead of the manifest's speaker column.",
    ),
]
Loss = Annotated[
    str | None,
    typer.Option(
        "--loss",
        metavar="[" + "|".join(LOSSES) + "]",
        autocompletion=_complete_losses,
        help="The loss. " + shown(_SUPERVISED["loss"]),
    ),
]
LossGate = Annotated[
    bool | None,
    typer.Option(
        "--loss-gate/--no-loss-gate",
        help="Train each epoch only on the low-loss items of the previous one (for pseudo-labels).",
    ),
]
LabelCorrection = Annotated[
    bool | None,
    typer.Option(
        "--label-correction/--no-label-correction", help="Relabel items confidently predicted as another speaker."
    ),
]
FreezeEncoderSteps = Annotated[int | None, typer.Option(metavar="N", help="Train only the head for the first N steps.")]
FreezeFrontendSteps = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="Run the encoder's pretrained frontend (WavLM) frozen for the first N steps: its pooling and the "
        "head learn first.",
    ),
]
EncoderLrScale = Annotated[
    float | None,
    typer.Option(
        metavar="X",
        help="The encoder's lr relative to the head's (e.g. 0.1 for a pretrained encoder). "
        + shown(_SUPERVISED["encoder_lr_scale"]),
    ),
]
