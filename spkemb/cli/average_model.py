"""`spkemb average-model`: the encoder weights of a run's last N checkpoints, averaged into one encoder.pt."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from spkemb.cli.console import console, print_json
from spkemb.cli.errors import guarded
from spkemb.errors import InputError


@guarded
def average_model(
    sources: list[Path] = typer.Argument(
        ..., metavar="RUN_DIR|CHECKPOINT...", help="A run folder (its checkpoints/step-*.pt), or checkpoint files."
    ),
    output: Path = typer.Option(..., "-o", "--output", metavar="ENCODER.pt", help="Encoder file to write."),
    last: int | None = typer.Option(
        None,
        metavar="N",
        help="Average the newest N checkpoints of RUN_DIR. [default: all it holds]",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUTPUT."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Average the encoder weights of checkpoints into one encoder file (as WeSpeaker's average_model.py).

    Sources are a run folder of pretrain or finetune (the newest --last N of RUN_DIR/checkpoints/step-*.pt)
    or a list of files, each a training checkpoint or an encoder.pt. They must hold the same encoder
    (name, options, tensor names and shapes): checkpoints of another config are refused (exit 2).
    Floating-point weights and BatchNorm statistics are averaged; integer buffers (BatchNorm's
    num_batches_tracked) keep the newest checkpoint's value. OUTPUT is an ordinary encoder file
    (extract, score, finetune --init, export-model take it) whose extra records the sources; it is
    written atomically, and an existing one is kept unless --overwrite.
    """
    from spkemb.train.average import average_encoders, average_sources, save_average

    if last is not None and last < 1:
        raise InputError("--last: must be at least 1")
    if output.exists() and not overwrite:
        raise InputError("already exists; --overwrite replaces it", output)
    paths = average_sources(sources, last)
    resolved = {p.resolve() for p in paths}
    if output.resolve() in resolved:
        raise InputError("-o is one of the sources; write the average to another file", output)
    avg = average_encoders(paths)
    out = save_average(avg, output)
    steps = ", ".join(str(s) for s in avg.steps if s is not None)
    console.print(
        f"averaged {len(paths)} checkpoints" + (f" (steps {steps})" if steps else "") + f" into {escape(str(out))}",
        highlight=False,
        soft_wrap=True,
    )
    if json_out:
        print_json({"output": str(out), "sources": [str(p) for p in avg.sources], "steps": avg.steps})
