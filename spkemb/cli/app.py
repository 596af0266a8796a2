"""spkemb's command-line entry point."""

from __future__ import annotations

import typer

from spkemb import __version__
from spkemb.cli import (
    augment,
    average_model,
    cluster,
    export_model,
    extract,
    finetune,
    import_embeddings,
    import_model,
    prepare,
    pretrain,
    score,
)
from spkemb.cli.examples import EXAMPLES
from spkemb.cli.usage import SpkembCommand, SpkembGroup


def _epilog(name: str) -> str:
    """The command's examples (the ones its man page shows), as the end of its --help."""
    parts = ["**Examples**", ""]
    for what, command in EXAMPLES.get(name, []):
        parts.append(f"* {what}" + "".join(f"  \n  `{line}`" for line in command.splitlines()))
    return "\n".join(parts)


app = typer.Typer(
    name="spkemb",
    cls=SpkembGroup,
    help="Speaker embeddings, from audio folders to scored trials.\n\n"
    "prepare → augment → pretrain → finetune → extract → cluster → score. "
    "Data goes to stdout, progress and logs to stderr; '-' means stdin/stdout.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    epilog=_epilog("spkemb"),
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spkemb {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Speaker embeddings, from audio folders to scored trials."""


for _name, _fn in (
    ("prepare", prepare.prepare),
    ("augment", augment.augment),
    ("pretrain", pretrain.pretrain),
    ("finetune", finetune.finetune),
    ("extract", extract.extract),
    ("cluster", cluster.cluster),
    ("score", score.score),
    ("import-model", import_model.import_model),
    ("average-model", average_model.average_model),
    ("export-model", export_model.export_model),
    ("import-embeddings", import_embeddings.import_embeddings),
):
    app.command(_name, cls=SpkembCommand, epilog=_epilog(_name))(_fn)


def main() -> None:
    app()
