"""`spkemb import-model`: another toolkit's pretrained encoder (a local checkpoint) as an spkemb ``encoder.pt``.

The readers are in :mod:`spkemb.imports`; this module parses, refuses an existing -o (unless
--overwrite), writes the encoder file atomically and prints what it wrote. Nothing here imports
torch before the arguments are checked.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.markup import escape

from spkemb.cli.common import console, guarded, print_json
from spkemb.errors import InputError
from spkemb.imports import FORMATS


class ModelFormat(StrEnum):
    wespeaker = "wespeaker"
    speechbrain = "speechbrain"
    threedspeaker = "3dspeaker"


assert {f.value for f in ModelFormat} == set(FORMATS)  # one list of formats


@guarded
def import_model(
    toolkit: ModelFormat = typer.Argument(
        ...,
        metavar="FORMAT",
        case_sensitive=False,
        help="The checkpoint's toolkit: wespeaker (ResNet34, ECAPA-TDNN: config.yaml + avg_model.pt), "
        "speechbrain (ECAPA-TDNN: embedding_model.ckpt [+ mean_var_norm_emb.ckpt, hyperparams.yaml]) "
        "or 3dspeaker (CAM++).",
    ),
    source: Path = typer.Argument(..., metavar="SRC", help="The model folder (or its checkpoint file)."),
    output: Path = typer.Option(..., "-o", "--output", metavar="ENCODER.pt", help="The spkemb encoder file to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing -o."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Read another toolkit's pretrained speaker encoder into an ordinary spkemb encoder file.

    The encoder computes what the toolkit's own pipeline computes, front-end included, so `extract`,
    `score`, `cluster` and `finetune --init` use it as any spkemb encoder; the file's extra records the
    source, its files' SHA-256 and the toolkit's settings. Checkpoints are read as weights only (never
    unpickled); a wrong or foreign file is one line and exit status 2. The file is written atomically.
    """
    if not source.exists():
        raise InputError("no such file or folder", source)
    if str(output) == "-":
        raise InputError("-o must be a file (an encoder file cannot go to stdout)")
    if output.is_dir():
        raise InputError("is a folder; -o names the encoder file to write", output)
    if output.exists() and not overwrite:
        raise InputError("exists; --overwrite replaces it", output)
    if not output.parent.is_dir():
        raise InputError("no such folder for -o", output.parent)

    from spkemb.imports import import_model as read_model
    from spkemb.models import describe_encoder, file_sha256, save_encoder

    model = read_model(toolkit.value, source)
    save_encoder(model, output, extra=getattr(model, "extra", {}))
    info = describe_encoder(model)
    summary = {
        "format": toolkit.value,
        "source": str(source),
        "output": str(output),
        "encoder": info["name"],
        "sha256": file_sha256(output),
        **{k: v for k, v in info.items() if k in ("parameters", "embed_dim", "sample_rate")},
    }
    if json_out:
        print_json(summary)
    console.print(
        f"wrote [bold]{escape(str(output))}[/]: {info['name']} from {toolkit.value} {escape(str(source))}",
        highlight=False,
    )
