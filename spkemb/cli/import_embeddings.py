"""`spkemb import-embeddings`: another toolkit's Kaldi xvector.scp (or .ark) as an HDF5 embedding store."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from spkemb.cli.console import console, print_json
from spkemb.cli.errors import guarded


@guarded
def import_embeddings(
    source: Path = typer.Argument(..., metavar="XVECTOR.scp", help="Kaldi scp (or ark) of one vector per utterance."),
    output: Path = typer.Option(..., "-o", "--output", metavar="EMB.h5", help="HDF5 store to write."),
    utt2spk: Path | None = typer.Option(
        None, metavar="UTT2SPK", help="Kaldi utt2spk: store each utterance's speaker (cluster's metrics use them)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUTPUT."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Turn a Kaldi xvector.scp (made by Kaldi, WeSpeaker or extract --export kaldi) into an HDF5 store.

    Read through kaldiio: binary or text float vectors (a 1 x D matrix counts as a vector), the keys
    becoming utt_ids in file order. score, cluster and the normalisations then work on another
    toolkit's embeddings. The store records its source. A missing, truncated or foreign file, a key
    holding frames instead of one vector, vectors of different sizes, NaN values or a repeated key:
    one line, exit 2, and an existing OUTPUT is kept (it is written atomically, and only replaced
    with --overwrite).
    """
    from spkemb.embeddings.kaldi_io import import_embeddings as run

    summary = run(source, output, utt2spk, overwrite)
    console.print(
        f"wrote {summary['embeddings']} embeddings of dimension {summary['dim']} from {escape(str(source))} "
        f"to {escape(str(output))}",
        highlight=False,
        soft_wrap=True,
    )
    if json_out:
        print_json(summary)
