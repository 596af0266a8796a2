"""spkemb's command-line entry point."""

from __future__ import annotations

import typer

from spkemb import __version__
from spkemb.cli import augment, cluster, extract, finetune, prepare, pretrain, score
from spkemb.cli.usage import SpkembCommand, SpkembGroup

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


app.command("prepare", cls=SpkembCommand)(prepare.prepare)
app.command("augment", cls=SpkembCommand)(augment.augment)
app.command("pretrain", cls=SpkembCommand)(pretrain.pretrain)
app.command("finetune", cls=SpkembCommand)(finetune.finetune)
app.command("extract", cls=SpkembCommand)(extract.extract)
app.command("cluster", cls=SpkembCommand)(cluster.cluster)
app.command("score", cls=SpkembCommand)(score.score)


def main() -> None:
    app()
