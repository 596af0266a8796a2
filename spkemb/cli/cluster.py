"""`spkemb cluster`: cluster an embedding store into pseudo-speakers and write `utt_id label` lines."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from spkemb.cli.console import console, print_json
from spkemb.cli.errors import guarded
from spkemb.cli.params import complete_device
from spkemb.cli.progress import LogProgress, log_interval, progress


class Method(StrEnum):
    kmeans = "kmeans"
    ahc = "ahc"
    two_stage = "two-stage"
    spectral = "spectral"


class KMeansImpl(StrEnum):
    auto = "auto"
    torch = "torch"
    sklearn = "sklearn"


class AhcKind(StrEnum):
    auto = "auto"
    exact = "exact"
    sparse = "sparse"


class Norm(StrEnum):
    none = "none"
    mean = "mean"
    standardize = "standardize"


@guarded
def cluster(
    embeddings: Path = typer.Argument(..., metavar="EMB.h5", help="Embedding store to cluster."),
    output: str | None = typer.Option(
        None,
        "-o",
        "--output",
        metavar="FILE",
        help="Write the labels here (atomically) instead of stdout; '-' for stdout.",
    ),
    method: Method = typer.Option(
        Method.two_stage,
        "--method",
        help="kmeans; ahc (average linkage on cosine "
        "distance); two-stage (k-means to --n-init-clusters, then AHC of the "
        "centroids: scales to millions); spectral (p-pruned cosine affinity; up to 20,000 embeddings).",
    ),
    n_clusters: int | None = typer.Option(
        None, "--n-clusters", metavar="N", help="Number of clusters. spectral without it: estimated from the eigengap."
    ),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        metavar="T",
        help="ahc / two-stage instead of --n-clusters: stop merging at this average cosine distance (0-2).",
    ),
    n_init_clusters: int | None = typer.Option(
        None,
        "--n-init-clusters",
        metavar="M",
        help="two-stage: k-means clusters of the first stage [default: min(embeddings, max(5000, 5 x --n-clusters))].",
    ),
    max_clusters: int = typer.Option(
        50, "--max-clusters", metavar="K", help="spectral: the largest count the eigengap estimate considers."
    ),
    p_neighbours: int | None = typer.Option(
        None,
        "--p-neighbours",
        metavar="P",
        min=1,
        help="spectral: each "
        "embedding keeps its P most similar neighbours in the affinity "
        "[default: chosen by the NME criterion].",
    ),
    norm: Norm = typer.Option(
        Norm.none,
        "--norm",
        help="Before cosine: none; mean (subtract the embeddings' "
        "mean); standardize (and divide by their per-dimension std).",
    ),
    seed: int = typer.Option(
        0, "--seed", metavar="N", help="Random seed (k-means, spectral); the same seed gives the same labels."
    ),
    device: str = typer.Option(
        "auto",
        "--device",
        metavar="[auto|cpu|cuda|cuda:N]",
        autocompletion=complete_device,
        help="Where k-means runs (--kmeans torch): auto = CUDA when available, else the CPU.",
    ),
    kmeans_impl: KMeansImpl = typer.Option(
        KMeansImpl.auto,
        "--kmeans",
        help="k-means: torch (batched matrix-product Lloyd, CPU or CUDA; two levels for many "
        "points x clusters); sklearn (KMeans / MiniBatchKMeans, CPU); auto = torch.",
    ),
    ahc_kind: AhcKind = typer.Option(
        AhcKind.auto,
        "--ahc",
        help="AHC: exact (full distance matrix, N^2 memory); sparse (the same average linkage, merges "
        "along a 20-neighbour graph: 50,000 centroids in under 1 GB); auto = exact up to 16,384 points "
        "(when it fits in half the free memory), else sparse.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary on stdout; labels then go only to -o."),
) -> None:
    """Cluster EMB.h5 into pseudo-speaker labels.

    Output: one 'utt_id label' line per embedding, in store order, no header (like Kaldi's utt2spk);
    labels are spk00000, spk00001, ... by cluster size, largest first, so the same partition always
    gets the same names. `spkemb finetune --labels` reads this file. When the store knows the true
    speakers, NMI, ARI and purity are printed on stderr (and are in --json). A failed run leaves an
    existing -o untouched.
    """
    from spkemb.cluster import ClusterOptions, cluster_store
    from spkemb.embeddings.store import read_embeddings
    from spkemb.errors import InputError
    from spkemb.utils.fileio import atomic_write_text, refuse_output_onto_inputs

    to_stdout = output is None or output == "-"
    if json_out and output == "-":
        raise InputError("--json prints the summary on stdout; give -o FILE for the labels")
    refuse_output_onto_inputs(output, {"embedding store": embeddings})
    emb = read_embeddings(embeddings)
    options = ClusterOptions(
        method=method.value,
        n_clusters=n_clusters,
        threshold=threshold,
        n_init_clusters=n_init_clusters,
        max_clusters=max_clusters,
        p_neighbours=p_neighbours,
        norm=norm.value,
        seed=seed,
        device=device,
        kmeans=kmeans_impl.value,
        ahc=ahc_kind.value,
    )
    # in a log: a line within 5 s, so a long k-means shows it is alive (SPKEMB_LOG_INTERVAL still lowers it)
    bars = LogProgress(interval=min(5.0, log_interval())) if not console.is_terminal else progress(transient=True)
    with bars as bar:
        task = bar.add_task("cluster", total=None, info=f"{len(emb)} embeddings")

        def on_progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        result = cluster_store(emb, options, on_progress, source=str(embeddings))
    text = result.text()
    if not to_stdout:
        atomic_write_text(str(output), text)
    elif not json_out:
        sys.stdout.write(text)
        sys.stdout.flush()
    _report(result.summary, embeddings, None if to_stdout else output)
    if json_out:
        print_json({**result.summary, "output": None if to_stdout else output})


def _report(s: dict[str, Any], embeddings: Path, output: str | None) -> None:
    """The human summary on stderr."""
    how = s["method"]
    if s["method"] == "two-stage":
        how += f" ({s.get('kmeans_clusters')} k-means clusters -> {s['n_clusters']}"
        how += f"; {s.get('kmeans')} k-means on {s.get('kmeans_device')}, {s['options'].get('ahc')} AHC)"
        if s.get("stage_seconds"):
            how += " [" + ", ".join(f"{k} {v:.1f} s" for k, v in s["stage_seconds"].items()) + "]"
    elif s["method"] == "spectral" and s.get("p_neighbours"):
        how += f" (p = {s['p_neighbours']}, eigengap estimate {s.get('estimated_clusters')})"
    z = s["sizes"]
    singletons = f"{z['singletons']} singleton{'' if z['singletons'] == 1 else 's'}"
    console.print(
        f"clustered {s['n_embeddings']} embeddings into [bold]{s['n_clusters']}[/] clusters with {how} "
        f"in {s['seconds']:.1f} s; sizes min {z['min']} / median {z['median']:g} / max {z['max']}, "
        + singletons
        + (f"; labels in {output}" if output else ""),
        highlight=False,
        soft_wrap=True,
    )
    if s["nmi"] is None:
        console.print(
            f"NMI, ARI and purity unavailable: {embeddings} has no speaker labels", highlight=False, soft_wrap=True
        )
    else:
        console.print(
            f"[bold]NMI[/] {s['nmi']:.4f}  [bold]ARI[/] {s['ari']:.4f}  [bold]purity[/] {s['purity']:.4f}"
            f"  against {s['n_speakers']} true speakers ({s['n_scored']} embeddings)",
            highlight=False,
            soft_wrap=True,
        )
